"""The engine's own figures without transformers, to compare two trees of Acorn on one machine.

benchmarks/inference.py's FULL setup (27.8M Llama shape): batch-1 greedy decode of 128 tokens after a
128-token prompt, the 64-request continuous-batching workload, static batches of 16. Prints the median
seconds of each as JSON. To compare an older commit, check it out beside this one and take turns:

    git worktree add /tmp/old REV
    PYTHONPATH=/tmp/old:/tmp/old/benchmarks python benchmarks/engine_ab.py float32 7 decode
    PYTHONPATH=$PWD:$PWD/benchmarks python benchmarks/engine_ab.py float32 7 decode

Arguments: dtype, runs per figure, and optionally a comma list of decode,continuous,static.
"""
import sys, time, json
import torch
import inference as B
from acorn.infer.engine import Engine
try:
    from acorn.model.transformer import ModelConfig, Transformer
except ImportError:
    from acorn.model import ModelConfig, Transformer
torch.manual_seed(0); torch.set_flush_denormal(True)
dtype = getattr(torch, sys.argv[1])
setup = B.FULL
model = Transformer(ModelConfig(**setup.model)).to("cpu", dtype).eval()
tok = B.id_tokenizer(setup.model["vocab_size"])
paged, plain = Engine(model, tok), Engine(model, tok, paged=False)
work = B.workload(setup, setup.model["vocab_size"])
def cont():
    B.fresh(paged)
    for p, o in work:
        paged.add_request(p, B.greedy(o))
    while paged.has_unfinished():
        paged.step()
def static():
    for i in range(0, len(work), 16):
        chunk = work[i:i + 16]; longest = max(o for _, o in chunk)
        plain.generate([p for p, _ in chunk], B.greedy(longest))
def decode():
    prompt = list(range(1, 129))
    B.fresh(paged).generate([prompt], B.greedy(128))
head = work[:16]
for p, o in head: paged.add_request(p, B.greedy(o))
while paged.has_unfinished(): paged.step()
res = {}
which = sys.argv[3].split(",") if len(sys.argv) > 3 else ["decode", "continuous", "static"]
for name, f in [(n, g) for n, g in (("decode", decode), ("continuous", cont), ("static", static)) if n in which]:
    t = []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter(); f(); t.append(time.perf_counter() - t0)
    res[name] = sorted(t)[len(t) // 2]
print(json.dumps(res))
