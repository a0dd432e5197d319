"""Start-up and shutdown of the service's model, index and worker threads."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import torch

from shared.device import DeviceUnavailableError
from shared.index_store import IndexStoreError
from shared.model import ModelError, load_checkpoint, model_fingerprint

from search_api.metrics import ServiceMetrics
from search_api.services.encoder import QueryEncoder, ServedModel
from search_api.services.links import LinkSigner
from search_api.services.index import IndexModelMismatchError, IndexService
from search_api.services.media import MediaService
from search_api.services.search import SearchService
from search_api.settings import ApiSettings

logger = logging.getLogger(__name__)

WARM_UP_QUERY = "a person walking a dog in a park"


class StartupError(RuntimeError):
    """Raised when the model or the index cannot be loaded for a reason the user can fix.

    The message is one line that names the setting, the value and the fix, so the
    launchers print it instead of a traceback.
    """


def describe_model_mismatch(settings: ApiSettings, error: IndexModelMismatchError) -> str:
    """Return the start-up message for an index built with another model than the loaded one."""
    if error.index_fingerprint is None or error.served_fingerprint is None:
        return str(error)
    built_with = (
        f"index {settings.index_dir} was built with model {error.index_fingerprint}"
    )
    if settings.checkpoint is not None:
        return (
            f"{built_with}, but --checkpoint (PIG_CHECKPOINT) {settings.model_dir} contains "
            f"model {error.served_fingerprint}; leave --checkpoint and PIG_CHECKPOINT unset to "
            f"load the model copy stored in {settings.index_dir / 'model'}, or pass the "
            f"checkpoint of model {error.index_fingerprint}"
        )
    return (
        f"{built_with}, but its model copy in {settings.model_dir} is model "
        f"{error.served_fingerprint}; re-run `indexer ingest` on the index to rewrite the "
        f"copy, or set --checkpoint (PIG_CHECKPOINT) to the checkpoint of model "
        f"{error.index_fingerprint}"
    )


def _describe_model_error(settings: ApiSettings, error: Exception) -> str:
    if isinstance(error, DeviceUnavailableError):
        return f"cannot load the text model on --device (PIG_DEVICE) {settings.device}: {error}"
    if settings.checkpoint is None:
        fix = (
            "re-run `indexer ingest` on the index to rewrite the model copy, or set "
            "--checkpoint (PIG_CHECKPOINT) to the checkpoint the index was built with"
        )
    else:
        fix = (
            "set --checkpoint (PIG_CHECKPOINT) to a checkpoint directory with config.json and "
            "model.safetensors"
        )
    return f"cannot load the text model from {settings.model_dir}: {error}; {fix}"


def _check_cuda_index(settings: ApiSettings) -> None:
    # A missing cuda:N is checked here so that its message names the setting and the fix.
    # NOTE: no test covers this branch, because the test hosts have at most one GPU.
    if not settings.device.startswith("cuda:") or not torch.cuda.is_available():
        return
    count = torch.cuda.device_count()
    if int(settings.device[5:]) >= count:
        raise StartupError(
            f"invalid --device (PIG_DEVICE) {settings.device}: this host has {count} CUDA "
            f"device(s), numbered from cuda:0 to cuda:{count - 1}; pick one of them, or use "
            f"cuda or auto"
        )


@dataclass
class Services:
    """Everything a request needs, created in the lifespan and kept on ``app.state``."""

    settings: ApiSettings
    encoder: QueryEncoder
    index: IndexService
    search: SearchService
    media: MediaService
    links: LinkSigner
    ready: bool = False
    stopping: bool = field(default=False)


def load_served_model(settings: ApiSettings) -> ServedModel:
    """Load the text model from ``settings.model_dir`` and log what was loaded and where."""
    model = load_checkpoint(settings.model_dir, device=settings.device)
    model.eval()
    device = str(next(model.parameters()).device)
    served = ServedModel(
        model=model,
        fingerprint=model_fingerprint(model),
        name=model.config.model_name,
        device=device,
    )
    logger.info(
        "loaded model %s (fingerprint %s, head %s, D=%d) from %s on %s (PIG_DEVICE=%s) "
        "with %d torch threads",
        served.name,
        served.fingerprint,
        model.config.head,
        model.config.embed_dim,
        settings.model_dir,
        device,
        settings.device,
        settings.torch_threads,
    )
    return served


def load_and_warm_up(settings: ApiSettings) -> ServedModel:
    """Load the model and encode one query with it, so a swapped-in model is known to work."""
    served = load_served_model(settings)
    served.model.embed_queries([WARM_UP_QUERY])
    return served


async def start_services(
    settings: ApiSettings, metrics: ServiceMetrics, links: LinkSigner
) -> Services:
    """Load the model and the index, start the worker threads and encode one real query."""
    torch.set_num_threads(settings.torch_threads)

    # The first model is loaded on the encoding thread; a model swapped in after a rebuild
    # is loaded on the reload thread, so queries keep running meanwhile.
    _check_cuda_index(settings)
    encode_executor = QueryEncoder.create_executor(settings.torch_threads)
    loop = asyncio.get_running_loop()
    try:
        served = await loop.run_in_executor(encode_executor, load_served_model, settings)
    except (ModelError, DeviceUnavailableError) as error:
        encode_executor.shutdown(wait=False)
        raise StartupError(_describe_model_error(settings, error)) from error
    except BaseException:
        encode_executor.shutdown(wait=False)
        raise

    encoder = QueryEncoder(
        executor=encode_executor,
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        cache_size=settings.cache_size,
        metrics=metrics,
    )
    index = IndexService(
        settings.index_dir,
        served,
        settings.reload_interval_s,
        metrics,
        model_loader=(lambda: load_and_warm_up(settings)) if settings.follows_index_model else None,
    )
    search = SearchService(settings, encoder, index, links, metrics)
    media = MediaService(index, settings.thumbnail_size)
    services = Services(
        settings=settings,
        encoder=encoder,
        index=index,
        search=search,
        media=media,
        links=links,
    )
    try:
        await index.open()
        view = index.view
        logger.info(
            "loaded index %s: snapshot %s, %d vectors, %d videos",
            settings.index_dir,
            view.snapshot_id,
            view.vector_count,
            view.total_videos,
        )
        encoder.start()
        search.start()
        # Readiness means a real query went through the encoder, not only that weights loaded.
        await encoder.encode(WARM_UP_QUERY, index.view.model)
    except IndexModelMismatchError as error:
        await stop_services(services)
        raise StartupError(describe_model_mismatch(settings, error)) from error
    except IndexStoreError as error:
        await stop_services(services)
        raise StartupError(
            f"cannot load index {settings.index_dir}: {error}; check it with `indexer verify "
            f"--index-dir {settings.index_dir}`, then re-run `indexer ingest` to publish a "
            f"new snapshot"
        ) from error
    except BaseException:
        await stop_services(services)
        raise
    index.start_reload_loop()
    services.ready = True
    return services


async def stop_services(services: Services) -> None:
    """Stop the reload loop and the worker threads; queued requests fail with 503."""
    services.ready = False
    services.stopping = True
    await services.search.stop()
    await services.encoder.stop()
    services.media.close()
    await services.index.close()
    logger.info("search service stopped")
