"""``python -m voiceid`` == ``voiceid``."""

from voiceid.cli import main

raise SystemExit(main())
