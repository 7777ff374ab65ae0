from typing import Annotated

from fastapi import Depends, Request

from app.service import TaskService


async def get_service(request: Request) -> TaskService:  # async: a sync one costs a thread hop a request
    return request.app.state.service


ServiceDep = Annotated[TaskService, Depends(get_service)]
