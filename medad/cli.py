"""Command line: ``python -m medad <command>`` (``make book`` wraps ``book``).

    python -m medad book [--profile quick|full] [--data-dir DIR] [--chapters "a, b"] [--force] [--no-html]
    python -m medad chapters
    python -m medad data list [DATASET] [--data-dir DIR]
    python -m medad data verify [ARCHIVE|DATASET] [--data-dir DIR]
    python -m medad data make-split lidc --data-dir DIR [--seed N] [--force]
    python -m medad render-glue NOTEBOOK.ipynb [-o OUT.ipynb]
    python -m medad rehearse [--data-dir DIR] [--chapters a,b] [--device cuda] [--no-exercises] [--json FILE]

A relative --data-dir is taken relative to the folder the command runs in.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings

from medad.errors import CacheWarning, ConfigError, MedadError, command_line


def parse_chapters(text: str | None) -> list[str] | None:
    """``--chapters``: names separated by commas and/or spaces (``a,b``, ``a, b``); None (not given) = all.

    Given but naming nothing (``--chapters ,``, ``--chapters ''``) is an error, never "all chapters".
    """
    if text is None:
        return None
    names = [c for c in re.split(r"[,\s]+", text) if c]
    if not names:
        raise ConfigError(f"--chapters {text!r} names no chapter; give names separated by commas "
                          "(`python -m medad chapters` lists them), or leave the option out for every chapter")
    return names


@contextlib.contextmanager
def _cache_notes():
    """Show each cache fault (full, read-only cache folder) once, as a one-line note on stderr, not as a warning dump."""
    seen: set[str] = set()
    original = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if not issubclass(category, CacheWarning):
            return original(message, category, *args, **kwargs)
        if str(message) not in seen:
            seen.add(str(message))
            print(f"note: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", CacheWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = original


def _book(args) -> int:
    from medad.pipeline import build_book

    return build_book(args.profile, args.data_dir, parse_chapters(args.chapters), force=args.force, html=not args.no_html)


def _chapters(args) -> int:
    from medad.pipeline import chapters_from_toc

    print("\n".join(chapters_from_toc()))
    return 0


def _named_datasets(name: str | None) -> list[str]:
    """``data list NAME``: the registered dataset NAME, or the datasets that read the archive NAME; None: all."""
    from medad.data import get_spec, list_datasets, manifest

    if name is None:
        return list_datasets()
    if name in list_datasets():
        return [name]
    readers = [d for d in list_datasets() if name in get_spec(d).archive_keys]
    if name in manifest() and readers:
        return readers
    raise ConfigError(f"no dataset or archive named {name!r}; datasets: {', '.join(list_datasets())}; "
                      f"archives: {', '.join(manifest())}")


def _named_archives(name: str | None) -> list[str]:
    """``data verify NAME``: the archive NAME (a data/manifest.yml key), or the archives dataset NAME reads; None: all."""
    from medad.data import get_spec, manifest

    if name is None:
        return list(manifest())
    if name in manifest():
        return [name]
    return sorted({key for d in _named_datasets(name) for key in get_spec(d).archive_keys})


def _data(args) -> int:
    from medad.data import dataset_status, get_spec, list_datasets, manifest, resolve_data_dir
    from medad.data.registry import archive_status, describe_status, locate_archive

    if args.action == "make-split":
        _check_split_seed(args.seed)
    elif args.seed is not None:
        raise ConfigError("--seed is an option of `data make-split` only")
    root = resolve_data_dir(args.data_dir)  # a directory given but absent is an error here, not synthetic data
    if args.action == "list":
        names = _named_datasets(args.name)
        print(f"data directory: {root}" if root else "no data directory given (--data-dir or MEDAD_DATA): every dataset is synthetic")
        n_real, explained = 0, set()
        for name in names:
            statuses = dataset_status(name, root)
            line = describe_status(statuses)
            n_real += line.startswith("real")
            print(f"{name:18s} {get_spec(name).title[:58]:58s} {line}")
            for st in statuses:
                if root and not st.usable and st.key not in explained:  # why, once per archive
                    explained.add(st.key)
                    print(f"{'':18s}   {st.detail}")
        keys = {key for name in names for key in get_spec(name).archive_keys}
        found = {st.key for name in names for st in dataset_status(name, root) if st.usable}
        print(f"{n_real} of {len(names)} dataset(s) real, from {len(found)} of {len(keys)} archive(s)")
        if root is not None and not any(st.found for name in list_datasets() for st in dataset_status(name, root)):
            print(f"note: {root} holds none of the archives medad reads: is it the right folder?", file=sys.stderr)
        return 0
    if root is None:
        raise MedadError("no data directory: pass --data-dir or set MEDAD_DATA")
    if args.action == "verify":
        keys = _named_archives(args.name)
        failed, found = [], 0
        for key in keys:
            st = archive_status(key, root, fresh=True)  # from the bytes, whatever a cache says
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
            wanted = "no archive of data/manifest.yml" if args.name is None else f"{', '.join(manifest()[k]['archive'] for k in keys)} not"
            print(f"error: {wanted} found in {root}", file=sys.stderr)
            return 1
        return 0
    if args.action == "make-split":
        name = args.name or "lidc"
        if name != "lidc":
            raise MedadError("only the LIDC split is a committed file; other datasets use their own or seeded carve-outs")
        from medad.data.lidc import index_entries
        from medad.data.splits import split_file, write_split_file

        if split_file(name).is_file() and not args.force:
            raise MedadError(f"{split_file(name)} exists (it is the committed split every result uses); "
                             "not overwritten: add --force to replace it")
        entries = index_entries(locate_archive("lidc", root).names())
        path = write_split_file("lidc", [e.group for e in entries], seed=args.seed or 0)
        print(f"wrote {path}")
        return 0
    return 2


def _check_split_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed < 2**63:
        raise ConfigError(f"--seed {seed}: the split seed must be a whole number in 0..2**63-1")


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
    book.add_argument("--chapters", default=None, help="chapter names separated by commas (default: all in _toc.yml)")
    book.add_argument("--force", action="store_true", help="re-execute even unchanged chapters")
    book.add_argument("--no-html", action="store_true", help="execute only; do not build the HTML")
    book.set_defaults(func=_book)
    chapters = sub.add_parser("chapters", help="list the chapters in book order")
    chapters.set_defaults(func=_chapters)
    data = sub.add_parser("data", help="list datasets, verify archives, make the LIDC split")
    data.add_argument("action", choices=["list", "verify", "make-split"])
    data.add_argument("name", nargs="?", default=None,
                      help="list: one dataset (or the datasets of one archive); verify: one archive or dataset; make-split: lidc")
    data.add_argument("--data-dir", default=None)
    data.add_argument("--seed", type=int, default=None, help="make-split: the split's seed (default 0)")
    data.add_argument("--force", action="store_true", help="make-split: replace an existing split file")
    data.set_defaults(func=_data)
    render = sub.add_parser("render-glue", help="write an executed chapter's glued numbers into its text, hide machine paths")
    render.add_argument("notebooks", nargs="+", help="executed notebooks (papermill output); rewritten in place without -o")
    render.add_argument("-o", "--output", default=None, help="write the rendered notebook here instead (one notebook)")
    render.set_defaults(func=_render_glue)
    sub.add_parser("rehearse", help="run every chapter's full profile with the counts capped, and the exercises "
                                    "(python -m medad rehearse --help)")
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["rehearse"]:  # its own options (medad.rehearse)
        from medad import rehearse

        return rehearse.main(given[1:])
    args = parser.parse_args(argv)
    with _cache_notes():
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
