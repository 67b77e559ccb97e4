"""``python -m schemas`` regenerates the JSON Schema files."""

from schemas.jsonschemas import write_json_schemas

for p in write_json_schemas():
    print(p)
