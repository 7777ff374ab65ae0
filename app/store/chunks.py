"""Lists cut into the sizes a call takes (Feishu's batch limits, SQLite's variable limit)."""


def chunked(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]
