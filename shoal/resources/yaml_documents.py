"""YAML text to documents, strictly: the one place a manifest's YAML is read.

PyYAML's safe loader is used, except that a key repeated in one mapping is an error (the safe
loader would keep the last value and silently drop a field). A syntax error becomes a
:class:`~shoal.errors.ManifestError` naming the file, the 0-based document index, the line and
the column.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import yaml

from shoal.errors import ManifestError

__all__ = ["read_documents"]


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key repeated in one mapping is an error.

    SafeLoader keeps the last value of a repeated key, which would silently drop a field.
    """

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Hashable, object]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_documents(text: str, file: str) -> Iterator[tuple[int, object]]:
    """``(index in the file, document)`` of each non-empty YAML document of ``text``."""
    loaded = yaml.load_all(text, Loader=_StrictLoader)
    index = 0
    while True:
        try:
            doc = next(loaded)
        except StopIteration:
            return
        except yaml.YAMLError as err:
            raise ManifestError(_yaml_reason(err), file=file, document=index) from None
        if doc is not None:
            yield index, doc
        index += 1


def _yaml_reason(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"invalid YAML: {err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return f"invalid YAML: {err}"
