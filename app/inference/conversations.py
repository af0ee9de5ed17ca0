"""Playground conversations: what a saved one holds, saving it for the team, finding it again.

A conversation is the models compared side by side (the base and up to four adapters), the generation settings,
the system prompt, and each turn: the user's message, every model's reply with its speed, and the reference
answer when the turn came from held-out data. Every field is bounded, so a saved conversation costs at most
about a megabyte; a team sees only its own. Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.users import Principal
from app.tables import Conversation

MAX_MODELS = 5  # the base and four adapters
MAX_TURNS = 50
MAX_TEXT = 20_000
RECENT = 20


class SavedReply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1, max_length=1024)
    text: str = Field("", max_length=MAX_TEXT)
    tokens_per_second: float | None = Field(None, ge=0, le=1e9)
    finish_reason: str | None = Field(None, max_length=32)
    error: str | None = Field(None, max_length=1000)


class ContextMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str = Field(..., max_length=MAX_TEXT)


class SavedTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: list[ContextMessage] = Field(default_factory=list, max_length=20)  # a held-out row's earlier turns
    user: str = Field(..., max_length=MAX_TEXT)
    replies: list[SavedReply] = Field(..., max_length=MAX_MODELS)
    reference: str | None = Field(None, max_length=MAX_TEXT)


class GenerationChoices(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(256, ge=1, le=1_000_000)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[str] = Field(default_factory=list, max_length=4)


class ConversationBody(BaseModel):
    """A conversation as the playground saves it."""

    model_config = ConfigDict(extra="forbid")
    title: str = Field(..., min_length=1, max_length=200)
    base_model: str = Field(..., min_length=1, max_length=1024)
    models: list[str] = Field(..., min_length=1, max_length=MAX_MODELS)
    system: str = Field("", max_length=MAX_TEXT)
    settings: GenerationChoices = Field(default_factory=GenerationChoices)
    turns: list[SavedTurn] = Field(..., min_length=1, max_length=MAX_TURNS)


def save(session: Session, principal: Principal, body: ConversationBody) -> Conversation:
    """Store the conversation for the caller's team."""
    conversation = Conversation(team_id=principal.team.id, created_by=principal.user.id, title=body.title.strip(),
                                data=body.model_dump(mode="json"))
    session.add(conversation)
    session.commit()
    return conversation


def recent(session: Session, principal: Principal) -> list[Conversation]:
    """The team's newest saved conversations."""
    return list(session.scalars(select(Conversation).where(Conversation.team_id == principal.team.id)
                                .order_by(Conversation.created_at.desc()).limit(RECENT)))
