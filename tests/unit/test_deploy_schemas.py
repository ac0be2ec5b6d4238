"""Every Kubernetes object of deploy/ against the API's own JSON schemas, offline.

kubernetes-validate bundles the schemas of each Kubernetes release; strict mode refuses unknown
fields, so a misspelt securityContext key fails here rather than being dropped by the API
server (which drops unknown fields with a warning, leaving the default in force).
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from tests.unit.test_deploy import manifests

# The oldest release still maintained upstream when this was written, and the newest bundled.
VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]
# The Prometheus Operator's custom resources: their schemas are the Operator's, not the API's.
CUSTOM_GROUPS = {"monitoring.coreos.com"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_matches_the_api_schema_strictly(version: str) -> None:
    checked = []
    for (kind, name), doc in manifests().items():
        if doc["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{kind} {name}: {error.message}") from error
        checked.append(kind)
    assert {"StatefulSet", "Job", "NetworkPolicy", "Service"} <= set(checked)


def test_a_misspelt_field_fails_the_check() -> None:
    doc = copy.deepcopy(manifests()[("StatefulSet", "gateway")])
    context = doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFilesytem"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)
