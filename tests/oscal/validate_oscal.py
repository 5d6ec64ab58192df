#!/usr/bin/env python3
"""Validate an OSCAL assessment-results JSON file with compliance-trestle.

Usage: validate_oscal.py PATH
Prints "OK" and exits 0 if valid; prints the validation error and exits 1 otherwise
(exit 2 on usage error). No trestle workspace is needed.

What runs (mirrors the steps of `trestle validate -f`, which only works inside a trestle workspace):
  1. trestle's pre-parse compatibility check (metadata timestamps must carry a timezone),
  2. AssessmentResults.oscal_read(): requires exactly one top-level key "assessment-results",
     then runs the pydantic model (unknown fields rejected, required fields, UUID/token/
     datetime patterns, enums),
  3. trestle's AllValidator (duplicate UUIDs; metadata responsible-parties vs roles).
"""
import argparse
import logging
import pathlib
import sys

import trestle.core.validator_factory as vfact  # import this before trestle.core.all_validator (circular import)
from trestle.common.const import VAL_MODE_ALL
from trestle.common.err import TrestleError
from trestle.core import oscal_backward_compatibility
from trestle.oscal.assessment_results import AssessmentResults


def validate(path: pathlib.Path) -> str | None:
    """Return None if valid, else an error message."""
    if not path.is_file():
        return f'file not found: {path}'
    if path.suffix != '.json':
        return f'expected a .json file: {path}'

    errors = [str(i) for i in oscal_backward_compatibility.check_file(path) if i.severity == 'ERROR']
    if errors:
        return '\n'.join(errors)

    try:
        model = AssessmentResults.oscal_read(path)
    except TrestleError as e:
        return str(e)
    if model is None:
        return f'could not read {path}'

    # trestle logs the detail of these checks (e.g. which UUID is duplicated) as warnings;
    # collect them and show them only if the check fails.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    trestle_logger = logging.getLogger('trestle')
    saved = (trestle_logger.level, trestle_logger.propagate)
    trestle_logger.setLevel(logging.WARNING)
    trestle_logger.propagate = False
    trestle_logger.addHandler(handler)
    try:
        validator = vfact.validator_factory.get(argparse.Namespace(mode=VAL_MODE_ALL))
        valid = validator.model_is_valid(model, True, None)
    finally:
        trestle_logger.removeHandler(handler)
        trestle_logger.setLevel(saved[0])
        trestle_logger.propagate = saved[1]
    if not valid:
        details = ''.join(f'\n  {r.getMessage()}' for r in records)
        return f'trestle validation failed: {validator.error_msg()}{details}'
    return cross_references(model)


def cross_references(model) -> str | None:
    """What trestle's models do not check: links inside the document."""
    for i, result in enumerate(model.results):
        controls = {
            c.control_id
            for sel in result.reviewed_controls.control_selections
            for c in (sel.include_controls or [])
        }
        observations = {o.uuid for o in (result.observations or [])}
        if result.end is not None and result.end < result.start:
            return f'results[{i}]: end {result.end} is before start {result.start}'
        for f in result.findings or []:
            if f.target.target_id not in controls:
                return f'results[{i}] finding {f.uuid}: target-id {f.target.target_id} is not a reviewed control'
            for r in f.related_observations or []:
                if r.observation_uuid not in observations:
                    return f'results[{i}] finding {f.uuid}: related observation {r.observation_uuid} does not exist'
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f'usage: {argv[0]} PATH', file=sys.stderr)
        return 2
    error = validate(pathlib.Path(argv[1]))
    if error is None:
        print('OK')
        return 0
    print(error)
    return 1


if __name__ == '__main__':
    sys.exit(main(sys.argv))
