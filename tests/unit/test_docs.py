"""The protocol reference is generated from proto and must match it."""
from tools import protodoc


def test_protocol_doc_matches_proto():
    text = protodoc.DOC.read_text()
    assert protodoc.render(text) == text, "docs/protocol.md is stale: run python -m tools.protodoc"
    import proto
    for tag in proto.REGISTRY:
        assert f"### `{tag}`" in text
