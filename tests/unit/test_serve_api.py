"""The serving API's pieces that need no server: the published request schema says what the validator enforces,
bearer tokens are checked as documented, and the schema of an open server lists no prediction token."""

from __future__ import annotations

import jsonschema
import pytest
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError

from protpeft.deploy.auth import ADMIN_SCHEME, API_SCHEME, check_token, without_scheme
from protpeft.deploy.schemas import PredictRequest, RequestError

pytestmark = pytest.mark.unit

BODIES = [
    {"pairs": [["MKT", "MKV"]]},
    {"sequences": ["MKT"]},
    {"sequences": ["MKT"], "threshold": 0.3},
    {"pairs": [["MKT", "MKV"]], "sequences": ["MKT"]},
    {"pairs": None, "sequences": ["MKT"]},
    {"threshold": 0.5},
    {},
    {"pairs": []},
    {"pairs": [["MKT"]]},
    {"sequences": ["MKT"], "extra": 1},
    {"sequences": ["mkt"]},
    {"sequences": ["MK T"]},
    {"sequences": [""]},
    {"sequences": ["MKJ"]},
    {"sequences": ["MKı"]},
    {"sequences": ["MKT"], "threshold": False},
    {"sequences": ["MKT"], "threshold": 1},
]


@pytest.mark.parametrize("body", BODIES)
def test_the_published_schema_accepts_exactly_what_the_server_accepts(body: dict) -> None:
    schema = PredictRequest.model_json_schema()
    try:
        PredictRequest.model_validate(body)
        accepted = True
    except ValidationError:
        accepted = False
    assert jsonschema.Draft202012Validator(schema).is_valid(body) == accepted


def test_published_limits_narrow_the_request_schema() -> None:
    from protpeft.deploy.app import api
    from protpeft.deploy.schemas import Limits, published_limits

    schema = published_limits(api.openapi(), Limits(max_items=3, max_length=5, letters="ACD"))
    request = schema["components"]["schemas"]["PredictRequest"]
    request = {**request, "components": schema["components"]}
    validator = jsonschema.Draft202012Validator(request)
    assert validator.is_valid({"sequences": ["ACDac"] * 3})
    assert not validator.is_valid({"sequences": ["ACDac"] * 4})
    assert not validator.is_valid({"sequences": ["ACDacD"]})
    assert not validator.is_valid({"pairs": [["ACD", "ACE"]]})


def bearer(token: str) -> HTTPAuthorizationCredentials:
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)


def test_tokens_are_checked_401_missing_403_wrong() -> None:
    check_token(None, None, "x")  # nothing configured: open
    check_token(bearer("s3cret"), "s3cret", "x")
    with pytest.raises(RequestError) as err:
        check_token(None, "s3cret", "/admin endpoints")
    assert err.value.status == 401 and err.value.headers == {"WWW-Authenticate": "Bearer"}
    with pytest.raises(RequestError) as err:
        check_token(bearer("s3cret!"), "s3cret", "/admin endpoints")
    assert err.value.status == 403


def test_an_open_server_publishes_no_prediction_token() -> None:
    from protpeft.deploy.app import api

    full = api.openapi()
    predict = full["paths"]["/v1/models/{name}/predict"]["post"]
    assert predict["security"] == [{API_SCHEME: []}] and {"401", "403"} <= set(predict["responses"])
    open_ = without_scheme(full, API_SCHEME)
    predict = open_["paths"]["/v1/models/{name}/predict"]["post"]
    assert "security" not in predict and not {"401", "403"} & set(predict["responses"])
    assert set(open_["components"]["securitySchemes"]) == {ADMIN_SCHEME}
    delete = open_["paths"]["/admin/models/{name}"]["delete"]
    assert delete["security"] == [{ADMIN_SCHEME: []}] and {"401", "403", "404"} <= set(delete["responses"])
    for path in open_["paths"].values():  # every error answer has the one shape the handlers send
        for operation in path.values():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (status, ref)
