"""Run configuration: YAML -> validated, typed :class:`Config` (docs/config.md)."""

from .checks import accuracy_warnings, check_memory, memory_estimate_bytes, output_estimate_bytes, run_work
from .errors import ConfigError, format_validation_error
from .loading import apply_overrides, load_config, load_yaml, parse_override, read_yaml, resolve_config, validate_config
from .schema import Config, Strict

__all__ = ["Config", "ConfigError", "Strict", "accuracy_warnings", "apply_overrides", "check_memory",
           "format_validation_error", "load_config", "load_yaml", "memory_estimate_bytes", "output_estimate_bytes",
           "parse_override", "read_yaml", "resolve_config", "run_work", "validate_config"]
