from tests.demo_fixtures import demo_checkpoints  # noqa: F401  (also loaded alone on the GPU machine)
