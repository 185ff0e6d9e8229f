"""`prismer serve`: the page that shows what the experts see and talks to a checkpoint.

Modules: viewer (the work on one image, as plain functions), uploads (limits and decoding),
examples (the allow-list of offered images), jobs (the bounded queue, one worker), web (the
FastAPI app and its page, in static/; needs the ``serve`` extra).
"""

from .examples import Example, Examples
from .jobs import JobQueue, JobStatus, QueueFull
from .uploads import UploadError, UploadLimits, decode_upload
from .viewer import LookRequest, LookResult, Panel, RequestError, Viewer, parse_answer_list

__all__ = [
    "Example",
    "Examples",
    "JobQueue",
    "JobStatus",
    "LookRequest",
    "LookResult",
    "Panel",
    "QueueFull",
    "RequestError",
    "UploadError",
    "UploadLimits",
    "Viewer",
    "decode_upload",
    "parse_answer_list",
]
