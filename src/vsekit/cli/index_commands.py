"""The commands that index and search collections: encode, search, serve."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..index.grouped import GROUPS
from .common import comma_list
from .hits import SERVER_ENV, print_hits, search_many


def _add_encode(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    n = new_command("encode", help="embed a collection (images folder, Karpathy JSON, CSV/JSONL, features) into a search index")
    n.add_argument("checkpoint", help="checkpoint file, run folder, model folder or ready model name (vsekit models)")
    n.add_argument("source", help="folder of images, Karpathy JSON, CSV/JSONL with path and/or caption columns, or a precomputed-features folder")
    n.add_argument("--out", required=True, help="index folder (an index already there is updated: only new items are embedded)")
    n.add_argument("--backend", default="exact", help="exact (default), faiss:<factory string> (e.g. faiss:IVF256,Flat or "
                   "faiss:HNSW32), or faiss:auto: chosen from --max-index-memory and --min-recall")  # fmt: skip
    n.add_argument("--search-params", help="FAISS search parameters (default nprobe=16 for IVF, efSearch=64 for HNSW)")
    n.add_argument("--max-index-memory", metavar="SIZE", help="faiss:auto: memory budget of building and searching the index, e.g. 2GB or 512MB (default: 2GB)")
    n.add_argument("--min-recall", type=float, help="faiss:auto: the recall@10 the chosen index must reach (default: 0.9)")
    n.add_argument("--source-kind", default="auto", help="auto (default), folder, karpathy, csv, jsonl or precomp")
    n.add_argument("--image-root", help="Karpathy JSON: the image folder (default: the JSON's folder)")
    n.add_argument("--split", help="Karpathy JSON / precomp: only these splits, e.g. test or train+val (default: all)")
    n.add_argument("--features", metavar="DIR", help="Karpathy JSON, for a model that reads features: the folder 'vsekit extract' wrote them to")
    n.add_argument("--views", help="feature sources: test-time views to average each image over, e.g. rot90,hflip, or 'none' "
                   "(default: the checkpoint's data.eval_views)")
    n.add_argument("--batch-size", type=int, default=64, help="items per forward pass (default: 64)")
    n.add_argument("--save-every-seconds", type=float, default=30.0, metavar="S",
                   help="keep what was embedded so far every S seconds (default: 30), so a killed run embeds it only once")  # fmt: skip
    n.add_argument("--workers", type=int, default=2, help="threads reading image files (default: 2)")
    n.add_argument("--device", default="cpu", help="cpu (default), cuda, auto, ...")
    n.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_search(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    q = new_command("search", help="search an index, or a folder of photos (indexed first where needed)")
    q.add_argument("index", nargs="?", help="index folder, or a folder of photos (indexed into FOLDER/.vsekit/MODEL/ "
                   "on first use, updated when photos change); not needed with --server")  # fmt: skip
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="query sentence")
    what.add_argument("--image", help="query image file")
    what.add_argument("--item", help="id of an indexed item (search with this result; loads no model)")
    what.add_argument("--queries", metavar="FILE", help="many queries, one a line: a text, or the path of an image file")
    q.add_argument("--target", default="image", choices=["image", "text"], help="what to return (default: image)")
    q.add_argument("--group", default="none", choices=GROUPS,
                   help="image: with --target text, one result per image, listing its matching captions (default: none)")  # fmt: skip
    q.add_argument("-k", type=int, default=10, help="results (default: 10)")
    q.add_argument("--offset", type=int, default=0, help="results to skip (pagination)")
    q.add_argument("--json", action="store_true", help="print the hits as JSON (with --queries: one JSON line a query)")
    q.add_argument("--server", metavar="URL", help="ask a running 'vsekit serve' instead of opening an index "
                   f"(default: ${SERVER_ENV} when no index is given)")  # fmt: skip
    _add_folder_options(q)
    q.add_argument("--checkpoint", help="the model's checkpoint, if it moved since the index was built")


def _add_folder_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--model", help="for a folder of photos: the model to index it with (a ready model from 'vsekit "
                   "models', a run folder or a checkpoint; default: the one it was indexed with)")  # fmt: skip
    c.add_argument("--index-dir", metavar="DIR", help="for a folder of photos: where its index lives (default: FOLDER/.vsekit/MODEL)")
    c.add_argument("--device", default="cpu", help="cpu (default), cuda, auto, ...")


def _add_serve(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    s = new_command("serve", help="serve a search page and an HTTP API over an index (needs the 'serve' extra)")
    s.add_argument("index", help="index folder (built by 'vsekit encode'), or a folder of photos (indexed first where needed)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 = any free port)")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from this origin (e.g. http://localhost:3000) to call the API; repeatable")  # fmt: skip
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this host name (a reverse proxy's, or *.example.org); IP addresses and "
                   "localhost always work, other names get a 400 so that no web page can rebind its name to this server; repeatable")  # fmt: skip
    s.add_argument("--max-k", type=int, default=100, help="most results per page a request may ask (default: 100)")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest uploaded query image in MiB (default: 10)")
    _add_folder_options(s)


def _cmd_encode(args: argparse.Namespace) -> int:
    from ..distributed import env_rank
    from ..index import Index

    idx = Index.build(
        args.checkpoint, args.source, args.out, source_kind=args.source_kind, backend=args.backend,
        batch_size=args.batch_size, device=args.device, progress=not args.quiet, image_root=args.image_root,
        split=args.split, search_params=args.search_params, workers=args.workers, features=args.features,
        checkpoint_seconds=args.save_every_seconds, max_index_memory=args.max_index_memory, min_recall=args.min_recall,
        views=None if args.views is None else [] if args.views.strip() == "none" else comma_list(args.views),
    )  # fmt: skip
    st = idx.stats()
    if env_rank() == 0:  # under torchrun, one line for the whole build
        print(f"{st['num_images']} images and {st['num_texts']} texts indexed in {idx.path}/ (backend {st['backend']})")
    return 0


def open_index(path: str, args: argparse.Namespace, lazy: bool) -> Any:
    """The index at ``path``, or the index of the photo folder ``path`` (built or updated first)."""
    from ..index import Index
    from ..index.folders import open_folder

    if (Path(path) / "index.json").is_file():
        if args.model or args.index_dir:
            raise ConfigError(f"--model/--index-dir: {path} is an index (it has its model); they go with a folder of photos")
        return Index.load(path, device=args.device, checkpoint=getattr(args, "checkpoint", None), lazy=lazy)
    return open_folder(path, args.model, index_dir=args.index_dir, device=args.device, lazy=lazy, progress=True)


def _cmd_search(args: argparse.Namespace) -> int:
    if args.server and args.index:
        raise ConfigError(f"--server: {args.index} and the server at {args.server} are two indexes; give one")
    server = args.server or (None if args.index else os.environ.get(SERVER_ENV) or None)
    if server is None and not args.index:
        raise ConfigError(f"search: give an index or photo folder, or --server URL (or set ${SERVER_ENV})")
    if server is not None:
        from ..serving.client import SearchClient

        searcher: Any = SearchClient(server)
    else:
        searcher = open_index(args.index, args, lazy=True)  # --item never loads the model
    options = {"k": args.k, "offset": args.offset, "target": args.target, "group": args.group}
    if args.queries:
        from ..index.queries import read_query_file

        queries = read_query_file(args.queries)
        answers = search_many(searcher, queries, **options)
        for (kind, query), hits in zip(queries, answers):
            print_hits(hits, args.json, query={"kind": kind, "query": query})
        return 0
    print_hits(searcher.search(text=args.text, image=args.image, item=args.item, **options), args.json)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ..serving.server import serve
    except ModuleNotFoundError as exc:
        raise ConfigError(f"vsekit serve needs the 'serve' extra ({exc.name} is missing): pip install 'vsekit[serve]'") from None
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb: expected a positive size, got {args.max_upload_mb}")
    index = open_index(args.index, args, lazy=False)  # the model loaded before listening
    serve(
        index, args.host, args.port, cors_origins=args.cors_origin, allowed_hosts=args.allowed_host,
        device=args.device, max_k=args.max_k,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
    )  # fmt: skip
    return 0


PARSERS = (_add_encode, _add_search, _add_serve)

COMMANDS = {"encode": _cmd_encode, "search": _cmd_search, "serve": _cmd_serve}
