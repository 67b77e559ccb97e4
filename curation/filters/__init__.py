"""Curation filters: the framework (``base``) and one module per built-in step."""

from curation.filters.base import (
    Filter,
    Result,
    Step,
    StepError,
    get_filter,
    param,
    param_specs,
    parse_step,
    register,
    registry,
)
from curation.filters.empty import EmptyFilter
from curation.filters.format import FormatFilter
from curation.filters.gold_match import GoldMatchFilter
from curation.filters.length import LengthFilter
from curation.filters.refusal import RefusalFilter
from curation.filters.repetition import RepetitionFilter
from curation.filters.verdict import VerdictFilter

__all__ = [
    "EmptyFilter", "Filter", "FormatFilter", "GoldMatchFilter", "LengthFilter",
    "RefusalFilter", "RepetitionFilter", "Result", "Step", "StepError", "VerdictFilter",
    "get_filter", "param", "param_specs", "parse_step", "register", "registry",
]
