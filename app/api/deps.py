"""The objects the lifespan built, handed to routes as dependencies."""

from typing import Annotated

from fastapi import Depends, Request

from app.replenish import ReplenishCycle
from app.service import TaskService


async def get_service(request: Request) -> TaskService:  # async: a sync one costs a thread hop a request
    return request.app.state.service


async def get_cycle(request: Request) -> ReplenishCycle:
    return request.app.state.cycle


ServiceDep = Annotated[TaskService, Depends(get_service)]
CycleDep = Annotated[ReplenishCycle, Depends(get_cycle)]
