"""The virtual read-only tree, built from manifests; no FUSE or I/O in here.

Layout::

    <org>/<name>/<files...>                               the default revision of a model
    hub/models--<org>--<name>/refs/<ref>                  contains the resolved revision
    hub/models--<org>--<name>/snapshots/<rev>/<files...>  Hugging Face cache layout

A file has one inode however many paths show it, so the page cache is shared.
A lookup of an unknown organisation creates a hidden placeholder directory (its models are
resolved on lookup); at most ``MAX_PLACEHOLDERS`` of those that never got a model are kept,
the oldest are forgotten, so lookups of missing names cannot grow the tree without bound.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from mxfs.errors import InvalidModelName, ModelNotFound
from mxfs.manifest.model import FileEntry, Manifest
from mxfs.manifest.names import (
    DEFAULT_REVISION,
    ModelRef,
    hub_folder,
    is_commit,
    name_from_hub_folder,
    validate_part,
)

ROOT_INODE = 1
HUB = "hub"
MAX_PLACEHOLDERS = 1024


class Kind(Enum):
    ROOT = "root"
    ORG = "org"          # children are models, resolved on lookup
    HUB = "hub"          # children are models--org--name, resolved on lookup
    HUB_MODEL = "hub_model"
    SNAPSHOTS = "snapshots"  # children are revisions, resolved on lookup
    PLAIN = "plain"      # a directory inside a model
    FILE = "file"


@dataclass
class Node:
    inode: int
    kind: Kind
    parent: int
    children: dict[str, int] = field(default_factory=dict)
    model: str = ""                  # "org/name" for nodes that belong to a model
    manifest: Manifest | None = None
    entry: FileEntry | None = None   # model files
    content: bytes | None = None     # small synthetic files (refs)
    listed: bool = True              # placeholder org dirs stay hidden until they hold a model

    @property
    def is_dir(self) -> bool:
        return self.kind is not Kind.FILE

    @property
    def size(self) -> int:
        if self.entry is not None:
            return self.entry.size
        return len(self.content) if self.content is not None else 0


class Tree:
    def __init__(self, max_placeholders: int = MAX_PLACEHOLDERS) -> None:
        self._ids = itertools.count(ROOT_INODE + 1)
        self.nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, Kind.ROOT, ROOT_INODE)}
        self._files: dict[tuple[str, str], int] = {}
        self._placeholders: OrderedDict[str, int] = OrderedDict()  # hidden org dirs, oldest first
        self.max_placeholders = max_placeholders
        self._new_dir(ROOT_INODE, HUB, Kind.HUB)

    # -- queries ---------------------------------------------------------------------

    def get(self, inode: int) -> Node:
        """The node of ``inode``; ModelNotFound (ENOENT) for a forgotten placeholder."""
        node = self.nodes.get(inode)
        if node is None:
            raise ModelNotFound(f"inode {inode} is gone (a placeholder of a name that holds no model)")
        return node

    def child(self, parent: int, name: str) -> Node | None:
        inode = self.get(parent).children.get(name)
        return self.nodes[inode] if inode is not None else None

    def listing(self, inode: int) -> list[tuple[str, Node]]:
        node = self.get(inode)
        return [
            (name, self.nodes[i]) for name, i in sorted(node.children.items()) if self.nodes[i].listed
        ]

    def pending_ref(self, parent: int, name: str) -> ModelRef | None:
        """The model a lookup of unknown ``name`` under ``parent`` asks for (None: no such entry).

        An unknown organisation under the root becomes an (unlisted) placeholder at once.
        Raises InvalidModelName for names that can never be models.
        """
        node = self.get(parent)
        if node.kind is Kind.ROOT:
            self._placeholder(validate_part(name, "organisation"))
            return None
        if node.kind is Kind.ORG:
            org = next(k for k, v in self.nodes[ROOT_INODE].children.items() if v == parent)
            return ModelRef(f"{org}/{validate_part(name)}", DEFAULT_REVISION)
        if node.kind is Kind.HUB:
            return ModelRef(name_from_hub_folder(name), DEFAULT_REVISION)
        if node.kind is Kind.SNAPSHOTS:
            if not is_commit(name):
                raise InvalidModelName(f"{name!r} is not a revision")
            return ModelRef(node.model, name)
        return None

    # -- building ----------------------------------------------------------------------

    def add_model(self, ref: ModelRef, manifest: Manifest) -> None:
        """Show ``manifest`` in the hub layout, and under ``org/name`` (first of main or a
        pinned commit wins)."""
        org, repo = manifest.name.split("/")
        org_dir = self._dir(ROOT_INODE, org, Kind.ORG)
        self.nodes[org_dir].listed = True
        self._placeholders.pop(org, None)  # a real directory now: never forgotten
        # a branch or tag other than main (resolved for the CSI plugin) shows only in the hub layout
        plain = ref.revision == DEFAULT_REVISION or is_commit(ref.revision)
        if plain and repo not in self.nodes[org_dir].children:
            model_dir = self._new_dir(org_dir, repo, Kind.PLAIN, model=manifest.name)
            self._populate(model_dir, manifest)
        hub_model = self._dir(self.nodes[ROOT_INODE].children[HUB], hub_folder(manifest.name),
                              Kind.HUB_MODEL, model=manifest.name)
        snapshots = self._dir(hub_model, "snapshots", Kind.SNAPSHOTS, model=manifest.name)
        refs = self._dir(hub_model, "refs", Kind.PLAIN, model=manifest.name)
        if manifest.revision not in self.nodes[snapshots].children:
            snap = self._new_dir(snapshots, manifest.revision, Kind.PLAIN, model=manifest.name)
            self._populate(snap, manifest)
        if not is_commit(ref.revision) and "/" not in ref.revision and ref.revision not in self.nodes[refs].children:
            inode = next(self._ids)
            self.nodes[inode] = Node(inode, Kind.FILE, refs, model=manifest.name,
                                     content=manifest.revision.encode())
            self.nodes[refs].children[ref.revision] = inode

    def file_inodes(self, manifest: Manifest) -> dict[str, int]:
        """path -> inode of every file of ``manifest`` that the tree shows."""
        return {
            path: inode for (rev, path), inode in self._files.items() if rev == manifest.revision
        }

    def manifests(self) -> list[Manifest]:
        """Every snapshot the tree shows, once each."""
        seen: dict[tuple[str, str], Manifest] = {}
        for node in self.nodes.values():
            m = node.manifest
            if m is not None:
                seen.setdefault((m.name, m.revision), m)
        return list(seen.values())

    def model_dir(self, name: str) -> Node | None:
        org, repo = name.split("/")
        org_node = self.child(ROOT_INODE, org)
        return self.child(org_node.inode, repo) if org_node else None

    def _populate(self, root: int, manifest: Manifest) -> None:
        self.nodes[root].manifest = manifest
        for entry in manifest.files:
            *dirs, leaf = entry.path.split("/")
            parent = root
            for d in dirs:
                parent = self._dir(parent, d, Kind.PLAIN, model=manifest.name)
                self.nodes[parent].manifest = manifest
            key = (manifest.revision, entry.path)
            inode = self._files.get(key)
            if inode is None:
                inode = next(self._ids)
                self.nodes[inode] = Node(inode, Kind.FILE, parent, model=manifest.name,
                                         manifest=manifest, entry=entry)
                self._files[key] = inode
            self.nodes[parent].children[leaf] = inode

    def _placeholder(self, org: str) -> None:
        """A hidden directory for an organisation not known to hold a model yet."""
        if org in self.nodes[ROOT_INODE].children:
            if org in self._placeholders:
                self._placeholders.move_to_end(org)
            return
        self._placeholders[org] = self._new_dir(ROOT_INODE, org, Kind.ORG, listed=False)
        while len(self._placeholders) > self.max_placeholders:
            old, inode = self._placeholders.popitem(last=False)
            del self.nodes[ROOT_INODE].children[old]
            del self.nodes[inode]

    def _dir(self, parent: int, name: str, kind: Kind, model: str = "") -> int:
        inode = self.nodes[parent].children.get(name)
        if inode is None:
            return self._new_dir(parent, name, kind, model=model)
        return inode

    def _new_dir(self, parent: int, name: str, kind: Kind, model: str = "", listed: bool = True) -> int:
        existing = self.nodes[parent].children.get(name)
        if existing is not None:
            return existing
        inode = next(self._ids)
        self.nodes[inode] = Node(inode, kind, parent, model=model, listed=listed)
        self.nodes[parent].children[name] = inode
        return inode
