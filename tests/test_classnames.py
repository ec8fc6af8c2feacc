"""Class names and templates as package data in CLIP_benchmark's JSON layout."""

import hashlib
import json

import pytest

from alignjax.evaluate import classnames

# SHA-256 of '\n'.join(list) of the lists as they were when they were Python tuples in
# alignjax/evaluate/classnames.py: the move to JSON must not change a single character.
BEFORE = {
    ('classnames', 'imagenet'): (
        1000,
        '571ae1c583b4be7da87519494c52bf405a46af05d5815627c7a0dee997068b60',
    ),
    ('templates', 'imagenet'): (
        80,
        '4f976686fb651bb5803d4689dcd849f75efe0ef19a3c801355bc9a6f03c8a5af',
    ),
    ('classnames', 'cifar10'): (
        10,
        'bb3914949cecedee6d1257f7f5fdb8f43fa3b2c8095fd1763161caf1b873fe59',
    ),
    ('classnames', 'cifar100'): (
        100,
        '60ae3a3ac1355fcfec19c0ea3cb5fde15203ecf3b537cabcf6d5d54688ee9a4d',
    ),
    ('templates', 'cifar'): (
        18,
        '9bbf912e1144ca4c7de308d478b5ced7ea3df9e61ce5d100ef184831bb5dc715',
    ),
}


@pytest.mark.parametrize('kind, name', sorted(BEFORE))
def test_builtin_lists_load_identically_to_the_former_tuples(kind, name):
    get = classnames.get_classnames if kind == 'classnames' else classnames.get_templates
    items = get(name)
    count, digest = BEFORE[kind, name]
    assert len(items) == count
    assert hashlib.sha256('\n'.join(items).encode()).hexdigest() == digest


def test_the_package_files_use_clip_benchmarks_keys_and_placeholder():
    names = classnames._package_json(classnames.CLASSNAMES_FILE)
    templates = classnames._package_json(classnames.TEMPLATES_FILE)
    assert {'imagenet1k', 'cifar10', 'cifar100'} <= set(names) and set(templates) == set(names)
    assert all('{c}' in t and '{}' not in t for ts in templates.values() for t in ts)
    assert classnames.get_classnames('imagenet1k') == classnames.get_classnames('imagenet')
    assert classnames.get_templates('simple') == ['a photo of a {}.']


def test_any_clip_benchmark_file_works_by_path_and_key(tmp_path):
    names = tmp_path / 'de_classnames.json'
    names.write_text(json.dumps({'cars': ['Limousine', 'Cabrio'], 'pets': ['Katze', 'Hund']}))
    templates = tmp_path / 'de_zeroshot_classification_templates.json'
    templates.write_text(json.dumps({'pets': ['ein Foto von einer {c}.', '{c}, ein Haustier.']}))
    assert classnames.get_classnames(f'{names}:pets') == ['Katze', 'Hund']
    assert classnames.get_templates(f'{templates}:pets') == [
        'ein Foto von einer {}.',
        '{}, ein Haustier.',
    ]
    # Without templates, a CLIP_benchmark file's templates beside it are used (same key).
    assert classnames.default_templates(f'{names}:pets') == f'{templates}:pets'
    assert classnames.default_templates(f'{names}:cars') == 'simple'
    assert classnames.default_templates('cifar100') == 'cifar100'
    with pytest.raises(ValueError, match=r"has no dataset 'birds'; it has \['cars', 'pets'\]"):
        classnames.get_classnames(f'{names}:birds')
    with pytest.raises(ValueError, match=r"maps datasets to lists.*name one as '.*:KEY'"):
        classnames.get_classnames(str(names))
