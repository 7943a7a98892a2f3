import threading

from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer import build_generation, current_generation, publish
from models import Embedder, ModelConfig, build_model
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product, write_catalog


def test_hot_swap_under_concurrent_queries_and_refusal_of_another_model(tmp_path, embedder):
    data = tmp_path / "data"
    small = build_generation(write_catalog(tmp_path / "a", products=2, images=2), data, embedder, workers=0,
                             progress=False)
    settings = Settings(data_dir=data, reload_interval_s=0, device="cpu")
    with TestClient(create_app(settings)) as client:
        state = client.app.state.service
        errors: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            image = jpeg(draw_product(0, 4))
            while not stop.is_set():
                response = client.post("/search", files={"image": ("q.jpg", image, "image/jpeg")}, data={"k": "2"})
                if response.status_code != 200:
                    errors.append(response.status_code)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        big = build_generation(write_catalog(tmp_path / "b", products=5, images=2), data, embedder, workers=0,
                               progress=False)
        state.maybe_reload()
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        assert client.get("/readyz").json()["generation"] == big.generation
        assert client.get("/readyz").json()["items"] == 10

        # A generation made by another model is refused; the old one keeps serving.
        other = Embedder(build_model(ModelConfig(image_size=128, embedding_dim=64)), device="cpu")
        foreign = build_generation(write_catalog(tmp_path / "c", products=2, images=1), data, other, workers=0,
                                   progress=False)
        assert current_generation(data) == foreign.generation
        state.maybe_reload()
        ready = client.get("/readyz").json()
        assert ready["generation"] == big.generation
        response = client.post("/search", files={"image": ("q.jpg", jpeg(draw_product(3, 4)), "image/jpeg")},
                               data={"k": "1"})
        assert response.status_code == 200 and response.json()["results"][0]["product_id"] == "p3"

        # Rolling the pointer back is followed too.
        publish(data, small.generation)
        state.maybe_reload()
        assert client.get("/readyz").json()["generation"] == small.generation
