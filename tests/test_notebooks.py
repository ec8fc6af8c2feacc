"""The notebooks (notebooks/README.md): each `NN_name.py` (jupytext percent format, the file
people edit) and its `NN_name.ipynb` (what Colab opens) hold the same cells; every notebook
keeps the shared conventions (an "Open in Colab" badge for its own path, the same install
cell, a `parameters` cell reading `ALIGNJAX_NOTEBOOK_TINY`); and each runs top to bottom in
tiny mode in a fresh Jupyter kernel, so that a notebook that raises fails the suite.

The kernels inherit this process's environment: the 8 CPU devices and fast-compile flags of
conftest.py, and ALIGNJAX_NOTEBOOK_TINY=1.
"""

import os
import re

import jupytext
import nbclient
import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, 'notebooks')
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(NOTEBOOK_DIR) if re.fullmatch(r'\d\d_\w+\.py', f))
# The public repository the install cell clones, and where the Colab badges open notebooks.
REPOSITORY = 'https://github.com/alignjax/alignjax'
COLAB = 'https://colab.research.google.com/github/alignjax/alignjax/blob/main/notebooks/'
# The four the project promises (README, notebooks/README.md).
REQUIRED = ('01_quickstart', '02_pretrained_weights', '03_fine_grained', '04_adaptation')


def _cells(nb) -> list[tuple[str, str, tuple]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get('tags', ()))) for c in nb.cells]


def _read_pair(name: str):
    text = jupytext.read(os.path.join(NOTEBOOK_DIR, name + '.py'))
    with open(os.path.join(NOTEBOOK_DIR, name + '.ipynb')) as f:
        return text, nbformat.read(f, as_version=4)


def test_the_promised_notebooks_exist_and_are_listed():
    assert set(REQUIRED) <= set(NOTEBOOKS), NOTEBOOKS
    with open(os.path.join(NOTEBOOK_DIR, 'README.md')) as f:
        listing = f.read()
    for name in NOTEBOOKS:
        assert f'({name}.ipynb)' in listing, f'notebooks/README.md does not link {name}'


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_text_source_and_ipynb_hold_the_same_cells(name):
    text, nb = _read_pair(name)
    assert _cells(text) == _cells(nb), (
        f'notebooks/{name}.ipynb is out of date with notebooks/{name}.py: run '
        f'`jupytext --to ipynb notebooks/{name}.py`'
    )
    executed = [c for c in nb.cells if c.cell_type == 'code' and (c.outputs or c.execution_count)]
    assert not executed, f'notebooks/{name}.ipynb is stored with outputs; store it without'


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_badge_install_cell_and_parameters(name):
    intro, install, params = jupytext.read(os.path.join(NOTEBOOK_DIR, name + '.py')).cells[:3]
    reference = jupytext.read(os.path.join(NOTEBOOK_DIR, '01_quickstart.py')).cells[1]
    assert intro.cell_type == 'markdown' and intro.source.startswith('# ')
    assert f'{COLAB}{name}.ipynb' in intro.source, f'{name}: no Colab badge for its own path'
    assert install.cell_type == 'code' and REPOSITORY in install.source
    assert install.source == reference.source, (
        f"{name}: the install cell differs from 01_quickstart's; keep them identical"
    )
    assert params.metadata.get('tags') == ['parameters']
    assert 'TINY = os.environ.get("ALIGNJAX_NOTEBOOK_TINY") == "1"' in params.source


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_runs_top_to_bottom_in_tiny_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv('ALIGNJAX_NOTEBOOK_TINY', '1')
    monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
    with open(os.path.join(NOTEBOOK_DIR, name + '.ipynb')) as f:
        nb = nbformat.read(f, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name='python3',
        resources={'metadata': {'path': str(tmp_path)}},  # The kernel's working directory.
    )
    client.execute()  # Raises CellExecutionError, with the cell and its traceback.
    images = sum(
        'image/png' in out.get('data', {})
        for cell in nb.cells
        if cell.cell_type == 'code'
        for out in cell.outputs
    )
    assert images >= 2, f'{name} showed {images} pictures'
