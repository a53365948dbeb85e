"""The modality contract, run over every registered modality (and importable by plugin authors)."""

import pytest

from anymae.plugins import load_registry
from anymae.testing import check_modality

REGISTRY = load_registry()

# Small tokenizer configs so the contract runs in a blink; a modality missing here runs on its defaults.
SMALL = {"image": {"img_size": [32, 48], "patch_size": 8, "in_chans": 3}}


@pytest.mark.parametrize("name", sorted(REGISTRY.modalities))
def test_every_registered_modality_satisfies_the_contract(name):
    check_modality(name, tokenizer=SMALL.get(name), registry=REGISTRY)


def test_image_contract_holds_for_grey_and_many_channel_images():
    check_modality("image", tokenizer={"img_size": 16, "patch_size": 4, "in_chans": 1}, registry=REGISTRY)
    check_modality("image", tokenizer={"img_size": 16, "patch_size": 4, "in_chans": 7}, registry=REGISTRY)
