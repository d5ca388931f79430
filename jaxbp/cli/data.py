"""``jaxbp data``: fetch a data set, or say where each one is found."""

from __future__ import annotations

import argparse

from jaxbp.cli.common import StdoutError, say


def add_data(sub: argparse._SubParsersAction) -> None:
    from jaxbp.choices import DATASETS

    p = sub.add_parser("data", help="fetch or describe data sets")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    f = actions.add_parser("fetch", help="download mnist or fashion-mnist and verify their SHA-256")
    f.add_argument("name", choices=DATASETS, metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    f.add_argument(
        "--dir",
        dest="cache_dir",
        default=None,
        metavar="DIR",
        help="cache root; the files go to DIR/NAME (default: the user cache, ~/.cache/jaxbp on Linux)",
    )
    f.add_argument(
        "--base-url", default=None, metavar="URL", help="download from this http(s) mirror instead of the canonical URL"
    )
    i = actions.add_parser("info", help="where a data set is found (or where it was looked for) and its sizes")
    i.add_argument("name", nargs="?", choices=DATASETS, metavar="NAME", help="default: all data sets")
    i.add_argument("--data-dir", default=None, metavar="DIR", help="look here first (as `jaxbp train --data-dir`)")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(run=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    import json

    from jaxbp import data
    from jaxbp.choices import DATASETS

    try:
        if args.data_action == "fetch":
            if args.base_url is not None:
                data.check_base_url(args.base_url, "--base-url")
            folder = data.fetch(args.name, args.cache_dir, base_url=args.base_url)
            say(f"{args.name}: verified files in {folder}")
            return 0
        infos = [data.info(name, args.data_dir) for name in ([args.name] if args.name else DATASETS)]
        say(json.dumps(infos, indent=2) if args.json else data.format_info(infos))
        invalid = [item["error"] for item in infos if item["status"] == "invalid"]
        if invalid:
            raise data.DataError("; ".join(invalid))
        return 0
    except data.DataError as err:
        return data.report_error(err, "jaxbp data")
    except StdoutError as err:
        return err.report("jaxbp data")
