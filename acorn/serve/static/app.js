/* Acorn's chat page: a plain script, no build step, no dependencies.
 *
 * The conversation lives in the browser (localStorage); the server is
 * stateless. A reply streams from POST v1/chat/completions as Server-Sent
 * Events ("data: {chunk}" lines, ending "data: [DONE]"), read incrementally
 * from the fetch body. Stop aborts the fetch; the server sees the disconnect
 * and stops generating, which frees the request's KV blocks.
 *
 * A server started with --rag answers from retrieved passages; the chunk that
 * ends the reply carries them as `sources` ({number, title, source, text,
 * cited}), shown under the answer (as text: a passage is never HTML) and kept
 * with it in the conversation.
 *
 * Images: "Attach image" reads files into data: URLs; they go with the next
 * message, shown as thumbnails in it, and are sent as OpenAI image_url parts
 * (a model that reads images: a LLaVA; a text-only one answers with an error).
 *
 * Paths are relative ("v1/models", not "/v1/models") so the page also works
 * behind a proxy that serves it under a prefix.
 */
(function () {
  "use strict";

  // ------------------------------------------------------------ Markdown
  // A small renderer for model output. Safety comes from the order: the whole
  // text is HTML-escaped first, so every tag in the result is one this code
  // wrote; links are kept only for http(s) URLs.

  function escapeHtml(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  var STASH = "\u0000"; // marks a stashed piece of finished HTML; stripped from input

  function renderInline(s) {
    var stash = [];
    function keep(html) { stash.push(html); return STASH + (stash.length - 1) + STASH; }
    // code spans first: nothing inside them is Markdown
    s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, function (_, ticks, code) {
      return keep("<code>" + code + "</code>");
    });
    // [label](http(s) url); any other scheme (javascript:, data:) stays text
    s = s.replace(/\[([^\]\n]+)\]\(\s*(\S+?)\s*\)/g, function (m, label, url) {
      if (!/^https?:\/\//i.test(url)) return m;
      return keep('<a href="' + url + '" target="_blank" rel="noopener noreferrer">' + emphasis(label) + "</a>");
    });
    // bare URLs; the text is escaped, so stop at an escaped quote or bracket
    s = s.replace(/\bhttps?:\/\/(?:(?!&lt;|&gt;|&quot;|&#39;)[^\s\u0000])+/gi, function (url) {
      var tail = /[.,;:!?)\]]+$/.exec(url);
      var cut = tail ? url.slice(0, -tail[0].length) : url;
      return keep('<a href="' + cut + '" target="_blank" rel="noopener noreferrer">' + cut + "</a>") + (tail ? tail[0] : "");
    });
    s = emphasis(s);
    // stashed pieces may hold other stashed pieces (code inside a link label)
    var restore = new RegExp(STASH + "(\\d+)" + STASH, "g");
    for (var i = 0; i < 4 && s.indexOf(STASH) >= 0; i++) {
      s = s.replace(restore, function (_, n) { return stash[+n]; });
    }
    return s;
  }

  function emphasis(s) {
    return s
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/\*([^\s*](?:[^*]*?[^\s*])?)\*/g, "<em>$1</em>")
      .replace(/(^|[^\w])_([^\s_](?:[^_]*?[^\s_])?)_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
  }

  var FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
  var HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
  var RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  var ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  var QUOTE = /^ {0,3}&gt; ?(.*)$/;

  function blankLine(line) { return /^\s*$/.test(line); }
  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || ITEM.test(line) || QUOTE.test(line);
  }

  // lines are already escaped
  function renderBlocks(lines) {
    var out = [];
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      var m;
      if (blankLine(line)) { i++; continue; }
      if ((m = FENCE.exec(line))) {
        var close = new RegExp("^ {0,3}" + (m[1][0] === "`" ? "`" : "~") + "{" + m[1].length + ",}\\s*$");
        var body = [];
        for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i]);
        i++; // the closing fence; an unclosed one (mid-stream) runs to the end
        var cls = m[2] ? ' class="language-' + m[2] + '"' : "";
        out.push('<pre><code' + cls + ">" + body.join("\n") + "</code></pre>");
        continue;
      }
      if ((m = HEADING.exec(line))) {
        var level = m[1].length;
        out.push("<h" + level + ">" + renderInline(m[2]) + "</h" + level + ">");
        i++;
        continue;
      }
      if (RULE.test(line)) { out.push("<hr>"); i++; continue; }
      if (QUOTE.test(line)) {
        var quoted = [];
        for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) quoted.push(m[1]);
        out.push("<blockquote>" + renderBlocks(quoted) + "</blockquote>");
        continue;
      }
      if ((m = ITEM.exec(line))) {
        i = renderList(lines, i, out);
        continue;
      }
      var para = [];
      for (; i < lines.length && !blankLine(lines[i]) && (para.length === 0 || !startsBlock(lines[i])); i++) {
        para.push(lines[i].trim());
      }
      // a chat reply's line breaks are meant: keep them
      out.push("<p>" + renderInline(para.join("\n")).replace(/\n/g, "<br>") + "</p>");
    }
    return out.join("");
  }

  // One list from lines[i]: items are the lines that start with a marker at
  // the first item's indent; deeper lines belong to the item before them and
  // are rendered as blocks of their own (nested lists).
  function renderList(lines, i, out) {
    var first = ITEM.exec(lines[i]);
    var indent = first[1].length;
    var ordered = /\d/.test(first[2]);
    var items = [];
    var column = 0; // where the current item's text starts
    while (i < lines.length) {
      var line = lines[i];
      var m = ITEM.exec(line);
      if (m && m[1].length === indent) {
        if (/\d/.test(m[2]) !== ordered) break; // a different kind of list starts
        items.push([m[3]]);
        column = indent + m[2].length + 1;
        i++;
        continue;
      }
      var lead = line.search(/\S/);
      if (lead < 0) {
        // a blank line ends the list unless the next line carries on with it
        var next = lines[i + 1] || "";
        var nm = ITEM.exec(next);
        if (next.search(/\S/) > indent || (nm && nm[1].length === indent)) { items[items.length - 1].push(""); i++; continue; }
        break;
      }
      var lazy = !startsBlock(line) && !blankLine(lines[i - 1]); // a wrapped line of the item's text
      if (lead > indent || lazy) {
        items[items.length - 1].push(line.slice(Math.min(lead, column)));
        i++;
        continue;
      }
      break;
    }
    var tag = ordered ? "ol" : "ul";
    var start = ordered ? parseInt(first[2], 10) : 1;
    var html = "<" + tag + (ordered && start !== 1 ? ' start="' + start + '"' : "") + ">";
    items.forEach(function (item) {
      var inner = renderBlocks(item);
      var single = /^<p>([\s\S]*)<\/p>$/.exec(inner);
      if (single && single[1].indexOf("<p>") < 0) inner = single[1];
      inner = inner.replace(/^<p>([\s\S]*?)<\/p>(?=<[uo]l)/, "$1");
      html += "<li>" + inner + "</li>";
    });
    out.push(html + "</" + tag + ">");
    return i;
  }

  function renderMarkdown(src) {
    var text = String(src == null ? "" : src).replace(/\r\n?/g, "\n").replace(/\u0000/g, "");
    return renderBlocks(escapeHtml(text).split("\n"));
  }

  // ------------------------------------------------------------ SSE
  // Yields each parsed `data:` payload of an OpenAI stream until [DONE].
  async function* sseData(body) {
    var reader = body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    try {
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done) break;
        buffer += decoder.decode(chunk.value, { stream: true });
        var lines = buffer.split("\n");
        buffer = lines.pop();
        for (var k = 0; k < lines.length; k++) {
          var line = lines[k].replace(/\r$/, "");
          if (line.slice(0, 5) !== "data:") continue; // comments, event names, blank separators
          var data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  // ------------------------------------------------------------ state
  var STORE = "acorn.chat.v1";
  var KEY_STORE = "acorn.apiKey"; // sessionStorage: a secret should not outlive the tab
  var DEFAULTS = { system: "", temperature: 0.7, top_p: 1, max_tokens: 256, model: "", tools: false };

  var state = {
    messages: [], // {role: "user"|"assistant"|"error"|"tool", content, note?, images?}; "tool": a call and its result
    pending: [], // data: URLs of the images attached to the next message
    settings: Object.assign({}, DEFAULTS),
    controller: null,
    busy: false,
  };

  function load() {
    try {
      var saved = JSON.parse(localStorage.getItem(STORE) || "null");
      if (saved && Array.isArray(saved.messages)) state.messages = saved.messages.filter(function (m) {
        return m && typeof m.content === "string" && /^(user|assistant|error|tool)$/.test(m.role) &&
          (m.images === undefined || (Array.isArray(m.images) && m.images.every(isImageURL)));
      });
      if (saved && saved.settings) Object.assign(state.settings, saved.settings);
    } catch (e) { /* a broken entry starts a fresh chat */ }
  }

  function isImageURL(url) { return typeof url === "string" && /^data:image\/[\w.+-]+;base64,/.test(url); }

  function save() {
    try {
      localStorage.setItem(STORE, JSON.stringify({ messages: state.messages, settings: state.settings }));
    } catch (e) { /* storage full or disabled: the chat still works, it just won't survive a reload */ }
  }

  // ------------------------------------------------------------ DOM
  var $ = function (id) { return document.getElementById(id); };
  var el = {};

  function messageNode(msg, index) {
    var node = document.createElement("article");
    node.className = "msg msg-" + msg.role;
    node.dataset.index = index;
    var who = document.createElement("h3");
    who.className = "who";
    who.textContent = msg.role === "user" ? "You" : msg.role === "assistant" ? "Assistant" :
      msg.role === "tool" ? "Tool" : "Error";
    var body = document.createElement("div");
    body.className = "body";
    if (msg.role === "error") body.setAttribute("role", "alert");
    node.appendChild(who);
    node.appendChild(body);
    fillMessage(node, msg);
    return node;
  }

  function fillMessage(node, msg) {
    var body = node.querySelector(".body");
    if (msg.role === "assistant") {
      body.innerHTML = renderMarkdown(msg.content);
      addCopyButtons(body);
    } else {
      body.textContent = msg.content; // user text and errors are shown as typed
      if (msg.images && msg.images.length) body.appendChild(thumbnails(msg.images));
    }
    fillSources(node, msg.sources);
    var note = node.querySelector(".note");
    if (msg.note) {
      if (!note) {
        note = document.createElement("p");
        note.className = "note";
        node.appendChild(note);
      }
      note.textContent = msg.note;
    } else if (note) {
      note.remove();
    }
  }

  // The passages a --rag reply was given, under it: the cited ones marked.
  function fillSources(node, sources) {
    var box = node.querySelector(".sources");
    if (!Array.isArray(sources) || !sources.length) { if (box) box.remove(); return; }
    if (!box) {
      box = document.createElement("details");
      box.className = "sources";
      box.open = true;
      node.querySelector(".body").after(box);
    }
    box.textContent = "";
    var summary = document.createElement("summary");
    var cited = sources.filter(function (s) { return s && s.cited; }).length;
    summary.textContent = "Sources (" + sources.length + (cited ? ", " + cited + " cited" : "") + ")";
    box.appendChild(summary);
    var list = document.createElement("ol");
    sources.forEach(function (s) {
      if (!s || typeof s !== "object") return;
      var item = document.createElement("li");
      item.className = "source" + (s.cited ? " cited" : "");
      item.value = s.number;
      var title = document.createElement("strong");
      title.textContent = String(s.title || s.source || "passage " + s.number);
      item.appendChild(title);
      if (s.cited) {
        var mark = document.createElement("span");
        mark.className = "badge";
        mark.textContent = "cited";
        item.appendChild(document.createTextNode(" "));
        item.appendChild(mark);
      }
      if (s.source) {
        var where = document.createElement("span");
        where.className = "where";
        where.textContent = " " + s.source;
        item.appendChild(where);
      }
      var text = document.createElement("p");
      text.className = "passage";
      text.textContent = String(s.text || "");
      item.appendChild(text);
      list.appendChild(item);
    });
    box.appendChild(list);
  }

  // Small previews of a message's images (data: URLs only: nothing is fetched).
  function thumbnails(urls, remove) {
    var box = document.createElement("div");
    box.className = "thumbs";
    urls.forEach(function (url, i) {
      if (!isImageURL(url)) return;
      var img = document.createElement("img");
      img.className = "thumb";
      img.src = url;
      img.alt = "attached image " + (i + 1);
      if (!remove) { box.appendChild(img); return; }
      var item = document.createElement("span");
      item.className = "thumb-item";
      var x = document.createElement("button");
      x.type = "button";
      x.className = "thumb-remove";
      x.textContent = "×";
      x.setAttribute("aria-label", "Remove image " + (i + 1));
      x.addEventListener("click", function () { remove(i); });
      item.appendChild(img);
      item.appendChild(x);
      box.appendChild(item);
    });
    return box;
  }

  function renderPending() {
    el.attachments.textContent = "";
    el.attachments.hidden = !state.pending.length;
    if (state.pending.length) {
      el.attachments.appendChild(thumbnails(state.pending, function (i) {
        state.pending.splice(i, 1);
        renderPending();
      }));
    }
  }

  function attach(files) {
    Array.prototype.forEach.call(files, function (file) {
      var reader = new FileReader();
      reader.onload = function () {
        if (isImageURL(reader.result)) { state.pending.push(reader.result); renderPending(); }
        else showError(file.name + " is not an image; attach a PNG, JPEG, GIF, WEBP or BMP file");
      };
      reader.readAsDataURL(file);
    });
  }

  function addCopyButtons(body) {
    body.querySelectorAll("pre").forEach(function (pre) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy code");
      pre.appendChild(button);
    });
  }

  function renderAll() {
    el.log.textContent = "";
    state.messages.forEach(function (msg, i) { el.log.appendChild(messageNode(msg, i)); });
    el.empty.hidden = state.messages.length > 0;
    updateControls();
    scrollToEnd(true);
  }

  function updateControls() {
    document.body.dataset.state = state.busy ? "streaming" : "idle";
    el.send.disabled = state.busy;
    el.stop.hidden = !state.busy;
    el.regenerate.disabled = state.busy || !state.messages.some(function (m) { return m.role === "user"; });
    el.log.setAttribute("aria-busy", state.busy ? "true" : "false");
  }

  function nearEnd() {
    return el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 80;
  }

  function scrollToEnd(force) {
    if (force || nearEnd()) el.log.scrollTop = el.log.scrollHeight;
  }

  function announce(text) { el.status.textContent = text; }

  // ------------------------------------------------------------ API
  function headers() {
    var h = { "Content-Type": "application/json" };
    var key = el.apiKey.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  // An OpenAI-shaped error body gives the message; otherwise say what we got.
  async function errorMessage(res) {
    var text = await res.text();
    try {
      var body = JSON.parse(text);
      if (body && body.error) return typeof body.error === "string" ? body.error : body.error.message;
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { /* not JSON */ }
    return "HTTP " + res.status + (text ? ": " + text.slice(0, 300) : "");
  }

  async function loadModels() {
    try {
      var res = await fetch("v1/models", { headers: headers() });
      if (!res.ok) throw new Error(await errorMessage(res));
      var ids = ((await res.json()).data || []).map(function (m) { return m.id; });
      el.model.textContent = "";
      ids.forEach(function (id) {
        var opt = document.createElement("option");
        opt.value = opt.textContent = id;
        el.model.appendChild(opt);
      });
      if (!ids.length) el.model.innerHTML = '<option value="">no models</option>';
      if (ids.indexOf(state.settings.model) >= 0) el.model.value = state.settings.model;
      state.settings.model = el.model.value;
      // an earlier failure to list models (say, a missing API key) is resolved now
      var before = state.messages.length;
      state.messages = state.messages.filter(function (m) { return m.source !== "models"; });
      if (state.messages.length !== before) { save(); renderAll(); }
    } catch (e) {
      el.model.innerHTML = '<option value="">models unavailable</option>';
      showError("Could not list models: " + e.message, "models");
    }
  }

  function showError(message, source) {
    var error = { role: "error", content: message };
    if (source) error.source = source;
    state.messages.push(error);
    save();
    el.log.appendChild(messageNode(state.messages[state.messages.length - 1], state.messages.length - 1));
    el.empty.hidden = true;
    scrollToEnd(true);
  }

  function requestBody() {
    var s = state.settings;
    var messages = [];
    if (s.system.trim()) messages.push({ role: "system", content: s.system });
    state.messages.forEach(function (m) {
      if (m.role === "user" && m.images && m.images.length) {
        // The images first, then the text: OpenAI content parts, each image a data: URL.
        var parts = m.images.map(function (url) { return { type: "image_url", image_url: { url: url } }; });
        messages.push({ role: "user", content: parts.concat([{ type: "text", text: m.content }]) });
      } else if (m.role === "user" || (m.role === "assistant" && m.content)) {
        messages.push({ role: m.role, content: m.content });
      }
    });
    var body = { messages: messages, stream: true, temperature: s.temperature, top_p: s.top_p, max_tokens: s.max_tokens };
    if (s.model) body.model = s.model;
    return body;
  }

  // With the tools switch on: the agent answers (POST v1/agent, not streamed);
  // each call and its result become a "tool" message before the answer.
  async function loadTools() {
    try {
      var res = await fetch("v1/agent/tools", { headers: headers() });
      if (!res.ok) return;
      var names = ((await res.json()).data || []).map(function (t) { return t.function.name; });
      if (!names.length) return;
      el.toolsNames.textContent = "(" + names.join(", ") + ")";
      el.toolsField.hidden = false;
    } catch (e) { /* a server without the agent route: no switch */ }
  }

  function push(msg) {
    state.messages.push(msg);
    el.log.appendChild(messageNode(msg, state.messages.length - 1));
  }

  async function completeWithTools() {
    var controller = new AbortController();
    state.controller = controller;
    state.busy = true;
    updateControls();
    el.empty.hidden = true;
    announce("The agent is working");
    var s = state.settings;
    try {
      var res = await fetch("v1/agent", {
        method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ messages: requestBody().messages, temperature: s.temperature,
                               max_new_tokens: s.max_tokens }),
      });
      if (!res.ok) throw new Error(await errorMessage(res));
      var result = await res.json();
      (result.steps || []).forEach(function (step) {
        step.tool_calls.forEach(function (call, i) {
          var r = step.results[i] || {};
          push({ role: "tool", content: call.function.name + "(" + call.function.arguments + ") → " + (r.content || "") });
        });
      });
      var reply = { role: "assistant", content: result.answer || "" };
      if (result.stopped !== "answer") reply.note = "The agent stopped: " + result.stopped.replace(/_/g, " ") + ".";
      push(reply);
      announce("Reply finished");
    } catch (e) {
      if (e.name === "AbortError") announce("Reply stopped");
      else { showError(e.message); announce("Error: " + e.message); }
    } finally {
      state.controller = null;
      state.busy = false;
      save();
      updateControls();
      scrollToEnd(true);
    }
  }

  // Ask for a reply to the conversation as it stands, streaming it into a new
  // assistant message.
  async function complete() {
    if (state.settings.tools && !el.toolsField.hidden) return completeWithTools();
    var reply = { role: "assistant", content: "" };
    state.messages.push(reply);
    var index = state.messages.length - 1;
    var node = messageNode(reply, index);
    node.setAttribute("aria-busy", "true");
    el.log.appendChild(node);
    el.empty.hidden = true;
    scrollToEnd(true);

    var controller = new AbortController();
    state.controller = controller;
    state.busy = true;
    updateControls();
    announce("Assistant is replying");

    var frame = 0;
    function paint() {
      frame = 0;
      var follow = nearEnd();
      fillMessage(node, reply);
      if (follow) scrollToEnd(true);
    }

    try {
      var res = await fetch("v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
      });
      if (!res.ok) throw new Error(await errorMessage(res));
      for await (var chunk of sseData(res.body)) {
        if (chunk.error) throw new Error(chunk.error.message || String(chunk.error));
        var choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          reply.content += choice.delta.content;
          if (!frame) frame = requestAnimationFrame(paint);
        }
        if (choice.finish_reason === "length") reply.note = "Stopped at the max tokens limit.";
        if (Array.isArray(chunk.sources)) reply.sources = chunk.sources;
      }
    } catch (e) {
      if (e.name === "AbortError") {
        reply.note = "Stopped.";
      } else {
        reply.error = e.message;
      }
    } finally {
      if (frame) cancelAnimationFrame(frame);
      state.controller = null;
      state.busy = false;
      node.removeAttribute("aria-busy");
      if (reply.error) {
        var message = reply.error;
        delete reply.error;
        if (!reply.content) { state.messages.splice(index, 1); node.remove(); }
        else fillMessage(node, reply);
        showError(message);
        announce("Error: " + message);
      } else {
        fillMessage(node, reply);
        announce(reply.note === "Stopped." ? "Reply stopped" : "Reply finished");
      }
      save();
      updateControls();
      scrollToEnd(false);
    }
  }

  function send(text) {
    if (state.busy || !text.trim()) return;
    var msg = { role: "user", content: text };
    if (state.pending.length) msg.images = state.pending.splice(0);
    renderPending();
    state.messages.push(msg);
    el.log.appendChild(messageNode(state.messages[state.messages.length - 1], state.messages.length - 1));
    save();
    complete();
  }

  // Drop everything after the last user message (its reply, errors) and ask again.
  function regenerate() {
    if (state.busy) return;
    var last = -1;
    state.messages.forEach(function (m, i) { if (m.role === "user") last = i; });
    if (last < 0) return;
    state.messages.length = last + 1;
    save();
    renderAll();
    complete();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function newChat() {
    stop();
    state.messages = [];
    save();
    renderAll();
    el.prompt.focus();
  }

  // ------------------------------------------------------------ wiring
  function bindSetting(id, key, parse) {
    var input = $(id);
    var out = $(id + "-out");
    input.value = state.settings[key];
    if (out) out.textContent = input.value;
    input.addEventListener("input", function () {
      var v = parse(input.value);
      if (parse !== String && !isFinite(v)) return;
      state.settings[key] = v;
      if (out) out.textContent = input.value;
      save();
    });
  }

  function init() {
    el.log = $("log");
    el.empty = $("empty");
    el.prompt = $("prompt");
    el.send = $("send");
    el.stop = $("stop");
    el.regenerate = $("regenerate");
    el.model = $("model");
    el.apiKey = $("api-key");
    el.status = $("status");
    el.attachments = $("attachments");
    var imageInput = $("image-input");
    $("attach").addEventListener("click", function () { imageInput.click(); });
    imageInput.addEventListener("change", function () { attach(imageInput.files); imageInput.value = ""; });

    load();
    bindSetting("system", "system", String);
    bindSetting("temperature", "temperature", parseFloat);
    bindSetting("top_p", "top_p", parseFloat);
    bindSetting("max_tokens", "max_tokens", function (v) { return parseInt(v, 10); });
    try { el.apiKey.value = sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { /* storage disabled */ }
    el.apiKey.addEventListener("change", function () {
      try { sessionStorage.setItem(KEY_STORE, el.apiKey.value.trim()); } catch (e) { /* storage disabled */ }
      loadModels();
    });
    el.model.addEventListener("change", function () { state.settings.model = el.model.value; save(); });

    $("composer").addEventListener("submit", function (e) {
      e.preventDefault();
      var text = el.prompt.value;
      if (!text.trim() || state.busy) return;
      el.prompt.value = "";
      send(text);
    });
    el.prompt.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    el.stop.addEventListener("click", stop);
    el.regenerate.addEventListener("click", regenerate);
    $("new-chat").addEventListener("click", newChat);

    var toggle = $("toggle-settings");
    toggle.addEventListener("click", function () {
      var open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      $("settings").classList.toggle("open", open);
    });

    el.log.addEventListener("click", function (e) {
      var button = e.target.closest("button.copy");
      if (!button) return;
      var code = button.parentElement.querySelector("code");
      var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
      if (navigator.clipboard) navigator.clipboard.writeText(code.textContent).then(done, function () {});
    });

    el.toolsField = $("tools-field");
    el.toolsNames = $("tools-names");
    var useTools = $("use-tools");
    useTools.checked = !!state.settings.tools;
    useTools.addEventListener("change", function () { state.settings.tools = useTools.checked; save(); });

    renderAll();
    loadModels();
    loadTools();
  }

  // For tests and the console: the renderer and the stream reader are plain functions.
  window.Acorn = { renderMarkdown: renderMarkdown, escapeHtml: escapeHtml, sseData: sseData, state: state };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
