"""tests/integrations runs against the frameworks themselves, each in its own venv.

The main suite (``make test``, the project venv, which has no tunix) does not collect
``tunix_test.py``; ``make test-tunix`` sets ``ENTROPYLAB_TUNIX_TESTS=1`` and runs it with the
tunix venv's interpreter, where a missing tunix is an import error (a failure), never a skip.
"""

import os

if os.environ.get("ENTROPYLAB_TUNIX_TESTS") != "1":
    collect_ignore = ["tunix_test.py"]
