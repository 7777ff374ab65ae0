from tests.feishu.fixtures import *  # noqa: F403
