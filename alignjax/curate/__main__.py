"""`python -m alignjax.curate`: see `alignjax.curate.tool`."""

from alignjax import errors
from alignjax.curate import tool

if __name__ == '__main__':
    errors.run_main(tool.main)
