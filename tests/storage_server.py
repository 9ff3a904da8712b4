"""A Cloud Storage API server on a loopback port, for tests of gs:// workdirs: gcp-storage-emulator,
with the object downloads that tensorstore (orbax's checkpoints) relies on made as Cloud Storage's.

    python tests/storage_server.py PORT BUCKET        # serves until killed; prints "ready" when it is

Clients reach it through their standard settings, which `environment(port)` gives: gcsfs (etils.epath)
reads STORAGE_EMULATOR_HOST, tensorstore TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING.
gcsfs is also told to send no credentials (FSSPEC_GS_TOKEN=anon): looking for them, it asks the
Compute Engine metadata server at 169.254.169.254, which a test must never reach. And it is kept to
the JSON API (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false): its default asks the bucket's layout over
gRPC with TLS, which the emulator does not serve, and retries without end.

The emulator's downloads lack what Cloud Storage's have (https://cloud.google.com/storage/docs/xml-api/
reference-headers#xgooggeneration, and the JSON API's ifGenerationMatch / ifGenerationNotMatch on
objects.get): the object's generation in the `x-goog-generation` header, and the generation
preconditions (412, or 304 for a conditional read of an unchanged object). OCDBT, the format of
orbax's checkpoints, reads its manifest conditionally and stops at "Malformed StorageGeneration"
without them; `download` adds both.
"""

from __future__ import annotations

import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  """objects.download with Cloud Storage's generation header and generation preconditions."""
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  generation = obj["generation"]
  match, not_match = (request.query.get(k, [None])[0] for k in ("ifGenerationMatch", "ifGenerationNotMatch"))
  if match is not None and match != generation:
    response.status = HTTPStatus.PRECONDITION_FAILED
    return
  if not_match is not None and not_match == generation:
    response.status = HTTPStatus.NOT_MODIFIED
    return
  _download(request, response, storage, *args, **kwargs)
  response["x-goog-generation"] = generation
  response["x-goog-metageneration"] = obj["metageneration"]


objects.download = download  # Before the server module builds its routing table from it.

from gcp_storage_emulator.server import create_server  # noqa: E402


def environment(port: int) -> dict[str, str]:
  """What points gcsfs (etils.epath) and tensorstore (orbax) at a server on this port."""
  url = f"http://127.0.0.1:{port}"
  return {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
    "FSSPEC_GS_TOKEN": "anon",
    "NO_GCE_CHECK": "True",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


def main(port: int, bucket: str) -> None:
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.start()
  print("ready", flush=True)
  threading.Event().wait()  # Serves until the process is killed.


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
