"""Model catalog: registration integrity (R16), indexes, events, validation."""

from __future__ import annotations

import pytest

from fedgate.federation.catalog import CatalogEvent, Deployment, ModelCatalog
from fedgate.types import Capability, ModelId, NodeId, RegionId

M = ModelId("whisper-large-v3")
US = NodeId("us-west-gpu-01")
EU = NodeId("eu-west-gpu-01")
US_R = RegionId("us-west-2")
EU_R = RegionId("eu-west-1")
T = Capability.TRANSCRIBE
G = Capability.GENERATE


@pytest.fixture
def events() -> list[CatalogEvent]:
    return []


@pytest.fixture
def catalog(events: list[CatalogEvent]) -> ModelCatalog:
    c = ModelCatalog()
    c.subscribe(events.append)
    return c


async def test_seed_registration_across_regions(catalog: ModelCatalog) -> None:
    await catalog.register(M, US, US_R, [T])
    await catalog.register(M, EU, EU_R, [T])
    assert await catalog.find_by_capability(T) == [(US, US_R), (EU, EU_R)]
    assert await catalog.list_all() == [M]
    meta = await catalog.get_metadata(M)
    assert meta.model_id == M
    assert meta.deployments == (Deployment(US, US_R, (T,)), Deployment(EU, EU_R, (T,)))
    assert meta.capabilities == frozenset({T})
    assert meta.regions == (US_R, EU_R)
    assert meta.nodes == (US, EU)


async def test_duplicate_registration_is_idempotent(
    catalog: ModelCatalog, events: list[CatalogEvent]
) -> None:
    assert await catalog.register(M, US, US_R, [T]) is True
    for _ in range(5):
        assert await catalog.register(M, US, US_R, ["transcribe"]) is False
    meta = await catalog.get_metadata(M)
    assert len(meta.deployments) == 1
    assert len(catalog) == 1
    assert await catalog.find_by_capability(T) == [(US, US_R)]
    assert [e.kind for e in events] == ["registered"]


async def test_re_registration_changes_capabilities(
    catalog: ModelCatalog, events: list[CatalogEvent]
) -> None:
    await catalog.register(M, US, US_R, [T])
    assert await catalog.register(M, US, US_R, [G, Capability.custom("sentiment")]) is True
    assert await catalog.find_by_capability(T) == []
    assert await catalog.find_by_capability(G) == [(US, US_R)]
    assert await catalog.find_by_capability("sentiment") == [(US, US_R)]
    assert events[-1] == CatalogEvent(
        "updated", M, US, US_R, (G, Capability("sentiment")), previous=(T,)
    )
    assert len((await catalog.get_metadata(M)).deployments) == 1


async def test_deregister_cleans_every_index(
    catalog: ModelCatalog, events: list[CatalogEvent]
) -> None:
    await catalog.register(M, US, US_R, [T])
    await catalog.register(M, EU, EU_R, [T])
    assert await catalog.deregister(M, US) is True
    assert await catalog.deregister(M, US) is False
    assert await catalog.find_by_capability(T) == [(EU, EU_R)]
    assert catalog.models_on(US) == []
    assert catalog.region_of(US) is None
    assert catalog.capabilities_of(US) == frozenset()
    assert await catalog.deregister(M, EU) is True
    assert await catalog.list_all() == []
    assert not catalog.has_capability(T)
    assert catalog.capabilities() == []
    assert catalog.nodes() == []
    with pytest.raises(KeyError, match="whisper-large-v3"):
        await catalog.get_metadata(M)
    assert events[-1].kind == "deregistered" and events[-1].node_id == EU


async def test_a_node_with_two_models_is_listed_once_per_capability(catalog: ModelCatalog) -> None:
    await catalog.register(M, US, US_R, [T])
    await catalog.register(ModelId("whisper-small"), US, US_R, [T, G])
    assert await catalog.find_by_capability(T) == [(US, US_R)]
    assert catalog.nodes_for(T, model=ModelId("whisper-small")) == [(US, US_R)]
    assert catalog.nodes_for(G, model=M) == []
    await catalog.deregister(M, US)
    # Still offered by the other model on the same node.
    assert await catalog.find_by_capability(T) == [(US, US_R)]
    assert catalog.capabilities_of(US) == frozenset({T, G})


async def test_deregister_node_drops_all_its_models(catalog: ModelCatalog) -> None:
    await catalog.register(M, US, US_R, [T])
    await catalog.register(ModelId("llama"), US, US_R, [G])
    await catalog.register(M, EU, EU_R, [T])
    assert sorted(await catalog.deregister_node(US)) == sorted([M, ModelId("llama")])
    assert await catalog.list_all() == [M]
    assert await catalog.find_by_capability(G) == []
    assert await catalog.deregister_node(US) == []


async def test_a_node_sits_in_one_region(catalog: ModelCatalog) -> None:
    await catalog.register(M, US, US_R, [T])
    await catalog.register(ModelId("llama"), US, US_R, [G])
    with pytest.raises(ValueError, match=r"us-west-2.*eu-west-1"):
        await catalog.register(ModelId("other"), US, EU_R, [G])
    # Nothing changed by the refused call.
    assert catalog.models_on(US) == [M, ModelId("llama")]
    await catalog.deregister(ModelId("llama"), US)
    # The node's only deployment may move.
    assert await catalog.register(M, US, EU_R, [T]) is True
    assert await catalog.find_by_capability(T) == [(US, EU_R)]


@pytest.mark.parametrize(
    ("model", "node", "region", "caps", "error", "message"),
    [
        ("", US, US_R, [T], ValueError, "model"),
        (M, " padded ", US_R, [T], ValueError, "node"),
        (M, US, "", [T], ValueError, "region"),
        (M, 42, US_R, [T], TypeError, "node: expected a str, got 42"),
        (M, US, US_R, "transcribe", TypeError, "capabilities"),
        (M, US, US_R, [], ValueError, "at least one capability"),
        (M, US, US_R, ["Not A Capability!"], ValueError, "capability"),
        (M, "x" * 300, US_R, [T], ValueError, "node"),
    ],
)
async def test_malformed_registrations_are_rejected(
    catalog: ModelCatalog,
    events: list[CatalogEvent],
    model: object,
    node: object,
    region: object,
    caps: object,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        await catalog.register(model, node, region, caps)  # type: ignore[arg-type]
    assert len(catalog) == 0 and events == []


async def test_listeners_hear_every_change_in_order_and_can_leave(catalog: ModelCatalog) -> None:
    heard: list[str] = []
    stop = catalog.subscribe(lambda e: heard.append(f"{e.kind}:{e.node_id}"))
    await catalog.register(M, US, US_R, [T])
    await catalog.register(M, US, US_R, [T, G])
    await catalog.deregister(M, US)
    stop()
    await catalog.register(M, EU, EU_R, [T])
    assert heard == [f"registered:{US}", f"updated:{US}", f"deregistered:{US}"]
    assert catalog.version == 4


def test_subscribe_with_replay_sees_existing_deployments_first() -> None:
    catalog = ModelCatalog()
    catalog.register_sync(M, US, US_R, [T])
    catalog.register_sync(M, EU, EU_R, [T, G])
    heard: list[CatalogEvent] = []
    catalog.subscribe(heard.append, replay=True)
    catalog.deregister_sync(M, US)
    assert heard == [
        CatalogEvent("registered", M, US, US_R, (T,)),
        CatalogEvent("registered", M, EU, EU_R, (T, G)),
        CatalogEvent("deregistered", M, US, US_R, (T,), (T,)),
    ]


def test_sync_helpers_mirror_the_coroutines() -> None:
    catalog = ModelCatalog()
    assert catalog.register_sync(M, US, US_R, [T])
    assert catalog.deployments() == [(M, Deployment(US, US_R, (T,)))]
    assert catalog.has_model(M) and M in catalog
    assert catalog.metadata(M).capabilities == frozenset({T})
    assert catalog.deregister_node_sync(US) == [M]
    assert not catalog.deregister_sync(M, US)
