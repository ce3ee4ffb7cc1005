"""The OpenAI API: chat completions, completions, models, embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request

from acorn.serve.common import get_state

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    state = get_state(request)
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                        "owned_by": "acorn"}]}
