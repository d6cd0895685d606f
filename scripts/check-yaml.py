"""Parses each YAML file named on the command line strictly: PyYAML's safe loader (which
refuses what YAML forbids, such as a bare `?` inside a flow mapping) plus a refusal of
duplicate keys, which YAML forbids too but PyYAML would silently resolve to the last one.
Exits 1 naming every file that fails."""
import sys

import yaml


class StrictLoader(yaml.SafeLoader):
    pass


def no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor`: keys written beside it override the merged ones
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, no_duplicates)

failed = 0
for path in sys.argv[1:]:
    try:
        with open(path, encoding="utf-8") as f:
            docs = list(yaml.load_all(f, Loader=StrictLoader))
        print(f"ok   {path} ({len(docs)} documents)", file=sys.stderr)
    except (OSError, yaml.YAMLError) as e:
        failed += 1
        print(f"FAIL {path}: {e}", file=sys.stderr)
sys.exit(1 if failed else 0)
