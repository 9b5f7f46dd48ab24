"""Command line: ``python -m medad <command>`` (``make book`` wraps ``book``).

    python -m medad book [--profile quick|full] [--data-dir DIR] [--chapters a,b] [--force] [--no-html]
    python -m medad chapters
    python -m medad data list [--data-dir DIR]
    python -m medad data verify [--data-dir DIR]
    python -m medad data make-split lidc --data-dir DIR [--force]
    python -m medad render-glue NOTEBOOK.ipynb [-o OUT.ipynb]
"""
from __future__ import annotations

import argparse
import sys

from medad.errors import MedadError, command_line


def _book(args) -> int:
    from medad.pipeline import build_book

    chapters = [c for c in args.chapters.split(",") if c] if args.chapters else None
    return build_book(args.profile, args.data_dir, chapters, force=args.force, html=not args.no_html)


def _chapters(args) -> int:
    from medad.pipeline import chapters_from_toc

    print("\n".join(chapters_from_toc()))
    return 0


def _data(args) -> int:
    from medad.data import dataset_status, get_spec, list_datasets, manifest, resolve_data_dir
    from medad.data.registry import archive_status, describe_status, locate_archive

    root = resolve_data_dir(args.data_dir)  # a directory given but absent is an error here, not synthetic data
    if args.action == "list":
        print(f"data directory: {root}" if root else "no data directory given (--data-dir or MEDAD_DATA): every dataset is synthetic")
        n_real, explained = 0, set()
        for name in list_datasets():
            statuses = dataset_status(name, root)
            line = describe_status(statuses)
            n_real += line.startswith("real")
            print(f"{name:18s} {get_spec(name).title[:58]:58s} {line}")
            for st in statuses:
                if root and not st.usable and st.key not in explained:  # why, once per archive
                    explained.add(st.key)
                    print(f"{'':18s}   {st.detail}")
        found = {st.key for name in list_datasets() for st in dataset_status(name, root) if st.usable}
        print(f"{n_real} of {len(list_datasets())} datasets real, from {len(found)} of {len(manifest())} archives")
        return 0
    if root is None:
        raise MedadError("no data directory: pass --data-dir or set MEDAD_DATA")
    if args.action == "verify":
        failed, found = [], 0
        for key in manifest():
            st = archive_status(key, root)
            found += st.found
            if st.usable:
                print(f"{'ok' if st.state == 'verified' else 'UNVERIFIED':10s} {key:18s} {st.detail}")
            elif st.found:
                failed.append(st)
                print(f"{'FAILED':10s} {key:18s} {st.state}: {st.detail}")
            else:
                print(f"{'missing':10s} {key:18s} {manifest()[key]['archive']} not in {root}")
        if failed:
            print(f"error: {len(failed)} archive(s) failed: " + ", ".join(f"{st.key} ({st.state})" for st in failed), file=sys.stderr)
            return 1
        if not found:
            print(f"error: no archive of data/manifest.yml found in {root}", file=sys.stderr)
            return 1
        return 0
    if args.action == "make-split":
        if args.name != "lidc":
            raise MedadError("only the LIDC split is a committed file; other datasets use their own or seeded carve-outs")
        from medad.data.lidc import index_entries
        from medad.data.splits import split_file, write_split_file

        if split_file(args.name).is_file() and not args.force:
            raise MedadError(f"{split_file(args.name)} exists (it is the committed split every result uses); "
                             "not overwritten: add --force to replace it")
        entries = index_entries(locate_archive("lidc", root).names())
        path = write_split_file("lidc", [e.group for e in entries], seed=args.seed)
        print(f"wrote {path}")
        return 0
    return 2


def _render_glue(args) -> int:
    from medad.notebook_export import main as render

    return render(args.notebooks, args.output)


@command_line("python -m medad")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    book = sub.add_parser("book", help="execute the chapters and build the HTML book")
    book.add_argument("--profile", default="quick", help="quick (CPU, minutes) or full (GPU, the papers' schedules)")
    book.add_argument("--data-dir", default=None, help="folder with the dataset archives (default: $MEDAD_DATA, else synthetic data)")
    book.add_argument("--chapters", default="", help="comma-separated chapter names (default: all in _toc.yml)")
    book.add_argument("--force", action="store_true", help="re-execute even unchanged chapters")
    book.add_argument("--no-html", action="store_true", help="execute only; do not build the HTML")
    book.set_defaults(func=_book)
    chapters = sub.add_parser("chapters", help="list the chapters in book order")
    chapters.set_defaults(func=_chapters)
    data = sub.add_parser("data", help="list datasets, verify archives, make the LIDC split")
    data.add_argument("action", choices=["list", "verify", "make-split"])
    data.add_argument("name", nargs="?", default="lidc")
    data.add_argument("--data-dir", default=None)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--force", action="store_true", help="make-split: replace an existing split file")
    data.set_defaults(func=_data)
    render = sub.add_parser("render-glue", help="write an executed chapter's glued numbers into its text, hide machine paths")
    render.add_argument("notebooks", nargs="+", help="executed notebooks (papermill output); rewritten in place without -o")
    render.add_argument("-o", "--output", default=None, help="write the rendered notebook here instead (one notebook)")
    render.set_defaults(func=_render_glue)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
