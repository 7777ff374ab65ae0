"""The task stores: the port, its two adapters, and the one chosen by the settings."""

from app.config import Settings, StoreKind
from app.paths import DataDir
from app.store.base import TaskStore


def build_store(settings: Settings) -> TaskStore:
    if settings.store_kind is StoreKind.BITABLE:
        from app.store.bitable import BitableTaskStore

        return BitableTaskStore.from_settings(settings)
    from app.store.sqlite import SqliteTaskStore

    return SqliteTaskStore(DataDir(settings.data_dir).tasks_db)


__all__ = ["TaskStore", "build_store"]
