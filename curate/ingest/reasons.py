"""Why an input row did not become a pair. Every rejected row carries one of these codes."""
from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    MISSING_LABEL = "missing_label"          # no label value at all (null / NaN)
    UNPARSEABLE_LABEL = "unparseable_label"  # a label value that is no known encoding
    NO_LABEL = "no_label"                    # the source says the row has no label (Pick-a-Pic has_label false)
    BAD_TYPE = "bad_type"                    # a value of the wrong type (text where a number belongs, bad JSON)
    OUT_OF_RANGE = "out_of_range"            # a number or time the tables cannot hold (votes past 2**31, year 50000)
    EMPTY_PROMPT = "empty_prompt"
    MISSING_FILE = "missing_file"            # an image path that does not exist under --image-root
    PATH_OUTSIDE_ROOT = "path_outside_root"  # an image path escaping --image-root (.., absolute, symlink out)
    URL_NOT_ALLOWED = "url_not_allowed"      # an image URL without --allow-network
    UNSUPPORTED_URL = "unsupported_url"      # a URL of a scheme that is never fetched (file://, ftp://)
    MISSING_IMAGE = "missing_image"          # a row of a file with image bytes whose bytes are null
    FETCH_FAILED = "fetch_failed"            # an image URL that could not be downloaded
    UNDECODABLE_IMAGE = "undecodable_image"
    TRUNCATED_IMAGE = "truncated_image"
    IMAGE_TOO_LARGE = "image_too_large"      # a header claiming more pixels than images.MAX_PIXELS (a bomb)
    IDENTICAL_IMAGES = "identical_images"    # both sides are the same image: no preference signal
    DUPLICATE_ROW = "duplicate_row"          # the same judgement seen earlier in the input


class Rejected(Exception):
    """Raised by a row-level check: the row is rejected with ``reason`` and a message for a person."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message
