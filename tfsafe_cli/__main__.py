"""``python -m tfsafe_cli``: the same as the ``tfsafe`` console script."""

from tfsafe_cli import run

run()
