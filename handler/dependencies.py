"""What routes get from the app, as FastAPI dependencies, so tests can swap them without patching."""

from __future__ import annotations

from fastapi import Request

from handler.chat_service import ChatService
from handler.config import Settings
from handler.model import ModelHolder


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_model(request: Request) -> ModelHolder:
    return request.app.state.model


def get_chat_service(request: Request) -> ChatService:
    return request.app.state.chat
