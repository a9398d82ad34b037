"""The Prometheus text format read back with prometheus_client's own parser."""

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse_metrics(text: str) -> Samples:
    """Every family, each with its HELP and TYPE (gauges), as name -> sorted labels ->
    value; a line the parser cannot read fails it."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation and family.type == "gauge", family.name
        found[family.name] = {
            tuple(sorted(sample.labels.items())): sample.value for sample in family.samples
        }
    return found
