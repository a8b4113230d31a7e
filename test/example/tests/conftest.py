import pytest

from shop import catalog


@pytest.fixture(scope="session")
def first_sku():
    return catalog.FIRST
