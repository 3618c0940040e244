"""The cluster generator: kura's vLLM entry point (kura.synth.vllm_worker, the very code the local backend runs)
in a GPU Job on Kubernetes, created and awaited through dagster-k8s's client.

Request and result travel through the storage root (S3): the request is written under
`_generation/<hash of the request>/`, the pod reads it, fetches the teacher from S3, generates, and PUTs the
result. The hash makes the step resumable: when a run is retried after the pod finished (the Dagster step died,
the pod did not), the stored result is used and no second Job is launched.
"""

import json

from kura.io import Storage, stable_hash
from kura.k8s.manifests import VllmJobConfig, vllm_generation_job
from kura.synth.generators import GenerationResult, Generator, SamplingConfig, VllmGenerator
from kura.io.layout import LAYOUT


def k8s_client():
    """dagster-k8s's client with the in-cluster config (a step pod), else the local kubeconfig."""
    import kubernetes
    from dagster_k8s.client import DagsterKubernetesClient

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return DagsterKubernetesClient.production_client()


def create_or_attach(create, namespace: str, obj: dict) -> None:
    """Create a Kubernetes object; one that exists already (409: a retried step) is kept and waited for."""
    import kubernetes

    try:
        create(namespace, obj)
    except kubernetes.client.ApiException as e:
        if e.status != 409:
            raise


class KubernetesVllmGenerator(Generator):
    name = "vllm-kubernetes"

    def __init__(self, storage: Storage, model_uri: str, job: VllmJobConfig, timeout_s: float = 6 * 3600,
                 max_model_len: int = 4096, dtype: str = "bfloat16", context=None, tensor_parallel_size: int = 1,
                 pipeline_parallel_size: int = 1):
        self.storage, self.model_uri, self.timeout_s = storage, model_uri, timeout_s
        gpus = tensor_parallel_size * pipeline_parallel_size  # vLLM splits the teacher over every GPU of the pod
        self.job = job if gpus <= job.gpu.gpus_per_node else job.model_copy(
            update={"gpu": job.gpu.model_copy(update={"gpus_per_node": gpus})})
        self.context = context
        self.local = VllmGenerator(model_uri, max_model_len=max_model_len, dtype=dtype, enforce_eager=False,
                                   tensor_parallel_size=tensor_parallel_size,
                                   pipeline_parallel_size=pipeline_parallel_size)

    def paths(self, request: dict) -> tuple[str, str, str]:
        """(job name, request path, result path) for a request; relative to the storage root."""
        h = stable_hash(request)
        return (f"kura-gen-{h[:12]}", *LAYOUT.generation(h))

    def job_object(self, request: dict) -> dict:
        name, req_rel, out_rel = self.paths(request)
        return vllm_generation_job(name, self.job, self.storage.uri(req_rel), self.storage.uri(out_rel))

    def generate(self, prompts: list[str], sampling: SamplingConfig) -> GenerationResult:
        return self.submit(self.local.request(prompts, sampling))

    def choose(self, prompts: list[str], choices: list[str]) -> list[str]:
        n = max(len(c) for c in choices)
        return self.submit(self.local.request(prompts, SamplingConfig(max_tokens=n + 2), choices)).completions

    def submit(self, request: dict) -> GenerationResult:
        request = {**request, "gpu_memory_utilization": 0.9}
        name, req_rel, out_rel = self.paths(request)
        if not self.storage.exists(out_rel):
            self.storage.write_json(req_rel, request)
            if self.context is not None:
                self._run_pipes_pod(request)
            else:
                self._run_job(name, self.job_object(request))
        return VllmGenerator.result(json.loads(self.storage.read_bytes(out_rel)))

    def pod_spec(self, request: dict) -> tuple[list[str], dict, dict]:
        """(command, env, base pod spec) for PipesK8sClient: the Job template's pod, the same object the tests
        validate, minus what the client sets itself (image, command, env)."""
        job = self.job_object(request)
        pod = job["spec"]["template"]["spec"]
        container = dict(pod["containers"][0])
        command = container.pop("command")
        env = {e["name"]: e["value"] for e in container.pop("env")}
        container.pop("image")
        return command, env, {**pod, "containers": [container]}

    def _run_pipes_pod(self, request: dict) -> None:
        """One pod through dagster-k8s Pipes: its log lines and summary stream into the Dagster run."""
        from dagster_k8s import PipesK8sClient

        command, env, spec = self.pod_spec(request)
        PipesK8sClient().run(context=self.context, image=self.job.image, command=command, namespace=self.job.namespace,
                             env=env, base_pod_spec=spec, pod_wait_timeout=self.timeout_s)

    def _run_job(self, name: str, job: dict) -> None:
        client = k8s_client()
        create_or_attach(client.batch_api.create_namespaced_job, self.job.namespace, job)
        client.wait_for_job_success(name, self.job.namespace, wait_timeout=self.timeout_s)
