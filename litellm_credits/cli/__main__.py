"""``python -m litellm_credits.cli``: the same as the ``litellm-credits`` command."""

import sys

from litellm_credits.cli.main import main

sys.exit(main())
