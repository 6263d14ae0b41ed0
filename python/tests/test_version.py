"""The package's version is the C++ library's (include/doremi/version.hpp), in the module and the metadata."""
import importlib.metadata
import re
from pathlib import Path

import doremi


def test_version_is_the_headers():
    header = (Path(__file__).resolve().parents[2] / "include/doremi/version.hpp").read_text()
    written = re.search(r'#define DOREMI_VERSION "([0-9.]+)"', header).group(1)
    assert doremi.__version__ == written
    assert importlib.metadata.version("doremi") == written
