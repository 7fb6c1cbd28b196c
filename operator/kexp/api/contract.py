"""The contract between the kexp operator and trainer containers: the one definition of it.

The operator renders pods from these names and trainers (kexp's own or a researcher's custom
image) read them; nothing else in kexp spells these strings out.
"""

from __future__ import annotations

from typing import Final

#: Namespace the operator and cluster-wide kexp objects live in.
SYSTEM_NAMESPACE: Final = "kexp-system"

#: Default name of the Secret that carries S3 credentials (``spec.storage.secretRef``).
DEFAULT_S3_SECRET: Final = "kexp-s3"  # noqa: S105 - a Secret object's name
#: Default bucket experiments write to (``spec.storage.bucket``).
DEFAULT_BUCKET: Final = "experiments"

#: Keys of the S3 Secret. They are the AWS SDKs' own variable names, so the same Secret also
#: works with ``envFrom`` for tools that read them, and each key becomes a file when mounted.
S3_ACCESS_KEY: Final = "AWS_ACCESS_KEY_ID"
S3_SECRET_KEY: Final = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a key name, not a secret
S3_ENDPOINT_KEY: Final = "AWS_ENDPOINT_URL"
S3_REGION_KEY: Final = "AWS_REGION"
S3_SECRET_KEYS: Final = (S3_ACCESS_KEY, S3_SECRET_KEY, S3_ENDPOINT_KEY, S3_REGION_KEY)

#: Extended resource name of NVIDIA GPUs (the device plugin's).
GPU_RESOURCE: Final = "nvidia.com/gpu"
