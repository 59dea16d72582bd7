"""A client generated from the server's own /openapi.json by openapi-python-client, used as an
integrator would: an admin stocks a product, a customer registers, finds it, orders it under
an Idempotency-Key and pays with the sandbox's accepting card; the order is then paid.

Every call goes through the generated code (models, parameters, parsing), so a document that
does not describe what the server does breaks these tests even when the server is right by
its own lights. Tokens come from the token endpoint directly, not through the generated
`token` operation: that endpoint's contract is the business of test_authlib.py, and whether its
generated module works at all is test_every_generated_operation_module_imports's.
"""

import importlib
import os
import pkgutil
import subprocess
import sys
import uuid

import pytest
import requests

PACKAGE = "orderly_client"


@pytest.fixture(scope="module")
def generation(server, tmp_path_factory):
    """The generator's output for the running server's document, and the generated package."""
    folder = tmp_path_factory.mktemp("generated")
    document = folder / "openapi.json"
    response = requests.get(server.base_url + "/openapi.json", timeout=30)
    assert response.status_code == 200, response.text[:300]
    document.write_bytes(response.content)
    generator = os.path.join(os.path.dirname(sys.executable), "openapi-python-client")
    # The generator formats its output with ruff from the same virtualenv; without it on PATH
    # it warns, and the warning would hide the ones about the document.
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(
        [generator, "generate", "--path", str(document), "--output-path", str(folder / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"openapi-python-client failed:\n{output}"
    sys.path.insert(0, str(folder))
    try:
        yield output, importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def client_package(generation):
    return generation[1]


def test_the_document_generates_a_client_without_warnings(generation):
    # The generator skips, with a warning, whatever it cannot model: an endpoint or schema a
    # stock client would not have.
    output, _ = generation
    assert "warning" not in output.lower(), output


def test_every_generated_operation_module_imports(client_package):
    # The generator can write code that fails at import time without a warning; each module is
    # one operation an integrator could not call. (0.29.1 does so for a required body offered in
    # two content types, as POST /auth/token is: openapi-python-client issue #1451.)
    import orderly_client.api

    broken = {}
    for module in pkgutil.walk_packages(orderly_client.api.__path__, "orderly_client.api."):
        try:
            importlib.import_module(module.name)
        except Exception as error:
            broken[module.name] = f"{type(error).__name__}: {error}"
    assert not broken, broken


def test_customer_orders_and_pays_with_the_generated_client(server, client_package):
    from orderly_client import AuthenticatedClient, Client
    from orderly_client.api.accounts import register
    from orderly_client.api.catalog import create_product, list_products
    from orderly_client.api.orders import get_order, place_order
    from orderly_client.api.payments import pay_order
    from orderly_client.models import (
        CreateProductRequest, Currency, OrderBody, OrderLine, PaymentBody, PaymentRequest, PlaceOrderRequest,
        ProductBody, RegisterRequest,
    )

    # An admin stocks a product.
    admin = AuthenticatedClient(base_url=server.base_url, token=server.admin_token(), timeout=30)
    sku = f"CT-{uuid.uuid4().hex[:10].upper()}"
    created = create_product.sync_detailed(
        client=admin,
        body=CreateProductRequest(sku=sku, name="Contract lamp", unit_price=3900, currency=Currency("USD"), stock=5),
        idempotency_key=str(uuid.uuid4()),
    )
    assert created.status_code == 201, created.content[:300]
    product = created.parsed
    assert isinstance(product, ProductBody)
    assert product.sku == sku and product.stock == 5

    # A customer registers and finds it in the public catalog.
    email, password = f"contract-{uuid.uuid4().hex[:12]}@example.com", uuid.uuid4().hex
    registered = register.sync_detailed(
        client=Client(base_url=server.base_url, timeout=30),
        body=RegisterRequest(email=email, password=password, name="Generated Client"),
    )
    assert registered.status_code == 201, registered.content[:300]
    token = server.token(email, password)["access_token"]
    customer = AuthenticatedClient(base_url=server.base_url, token=token, timeout=30)
    listed = list_products.sync_detailed(client=customer, q="Contract lamp", limit=100)
    assert listed.status_code == 200, listed.content[:300]
    assert product.id in [found.id for found in listed.parsed.data]

    # It orders two under an Idempotency-Key; a retry under the same key replays the order.
    key = str(uuid.uuid4())
    order_body = PlaceOrderRequest(items=[OrderLine(product_id=product.id, quantity=2)])
    placed = place_order.sync_detailed(client=customer, body=order_body, idempotency_key=key)
    assert placed.status_code == 201, placed.content[:300]
    order = placed.parsed
    assert isinstance(order, OrderBody)
    assert str(order.status) == "pending"
    assert order.total == 7800 and order.currency == "USD"
    replayed = place_order.sync_detailed(client=customer, body=order_body, idempotency_key=key)
    assert replayed.status_code == 201
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.parsed.id == order.id

    # It pays with the sandbox's accepting card: the order is paid.
    paid = pay_order.sync_detailed(
        order.id, client=customer, body=PaymentRequest(payment_method="pm_card_visa"),
        idempotency_key=str(uuid.uuid4()),
    )
    assert paid.status_code == 201, paid.content[:300]
    payment = paid.parsed
    assert isinstance(payment, PaymentBody)
    assert payment.order_id == order.id
    assert payment.amount == 7800
    fetched = get_order.sync_detailed(order.id, client=customer)
    assert fetched.status_code == 200, fetched.content[:300]
    assert isinstance(fetched.parsed, OrderBody)
    assert str(fetched.parsed.status) == "paid"
