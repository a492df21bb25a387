"""Prepare a corpus into token shards: `python scripts/prepare_data.py SOURCE OUT_DIR [options]`.

SOURCE: text file(s) or a directory of them, JSONL, Parquet (--column names the text column),
a `datasets` save_to_disk directory, or a hub dataset name. See `--help`.
"""

import sys

from lmlab.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
