"""Deployment settings rendered from one typed source: the Helm values for the official Dagster chart
(dagster/dagster) and the `dagster.yaml` instance config a local process uses to talk to the same PostgreSQL.

The chart generates its own `dagster.yaml`, whose storage section is
`postgres.postgres_db: {username, password: {env: DAGSTER_PG_PASSWORD}, hostname, db_name, port, scheme}` built from the
`postgresql.*` values; `instance_config` renders exactly that section from the same `PostgresSettings`, so the
test that runs a materialization against a real PostgreSQL uses the storage config production uses.
`k8s/values.yaml` in the repository is this module's output (`python -m pipelines.cli k8s`); a test fails when
they drift.
"""
from __future__ import annotations

from pydantic import BaseModel, Field

from kura.k8s.manifests import GpuPool


class PostgresSettings(BaseModel):
    """Dagster's run, event-log and schedule storage."""

    host: str = Field("kura-postgresql", description="Hostname of the PostgreSQL server (a managed instance or "
                                                     "the chart's subchart service).")
    port: int = Field(5432, description="Port.")
    username: str = Field("dagster", description="User.")
    database: str = Field("dagster", description="Database.")
    password_env: str = Field("DAGSTER_PG_PASSWORD", description="Environment variable holding the password (the "
                                                                 "chart fills it from its postgresql secret).")
    scheme: str = Field("postgresql+psycopg2", description="SQLAlchemy URL scheme: dagster-postgres ships "
                                                           "psycopg2, while SQLAlchemy 2.1's plain 'postgresql' "
                                                           "means psycopg 3.")
    deploy_subchart: bool = Field(False, description="Let the chart deploy a PostgreSQL (demo clusters); "
                                                     "production points at a managed one.")


class DeploySettings(BaseModel):
    """What differs between clusters; everything else is convention."""

    registry: str = Field("ghcr.io/your-org", description="Image registry.")
    version: str = Field("0.1.0", description="Image tag of all three kura images.")
    namespace: str = Field("kura", description="Namespace of runs and GPU jobs.")
    storage_root: str = Field("s3://kura-artifacts/prod", description="KURA_STORAGE_ROOT of every run.")
    s3_endpoint: str = Field("", description="KURA_S3_ENDPOINT (empty: AWS's default).")
    corpus_dir: str = Field("s3://kura-artifacts/crawl", description="KURA_CORPUS_DIR: the raw input prefix.")
    s3_secret: str = Field("kura-s3", description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.")
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    gpu: GpuPool = Field(default_factory=GpuPool)

    def image(self, flavour: str) -> dict:
        return {"repository": f"{self.registry}/kura-{flavour}", "tag": self.version, "pullPolicy": "IfNotPresent"}

    def run_env(self) -> list[dict]:
        env = {"KURA_ENV": "cluster", "KURA_STORAGE_ROOT": self.storage_root, "KURA_CORPUS_DIR": self.corpus_dir,
               "KURA_K8S_NAMESPACE": self.namespace, "KURA_GPU_POOL": self.gpu.pool,
               "KURA_IMAGE_VLLM": f"{self.registry}/kura-gpu-vllm:{self.version}",
               "KURA_IMAGE_MEGATRON": f"{self.registry}/kura-gpu-megatron:{self.version}",
               "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}
        if self.s3_endpoint:
            env["KURA_S3_ENDPOINT"] = self.s3_endpoint
        return [{"name": k, "value": v} for k, v in env.items()]


def helm_values(s: DeploySettings) -> dict:
    """Values for `helm upgrade --install kura dagster/dagster -f k8s/values.yaml`."""
    pg = s.postgres
    return {
        "telemetry": {"enabled": False},
        "dagster-user-deployments": {
            "enabled": True,
            "deployments": [{
                "name": "kura",
                "image": s.image("cpu"),
                "dagsterApiGrpcArgs": ["-m", "pipelines.definitions"],
                "port": 3030,
                "env": s.run_env(),
                "envSecrets": [{"name": s.s3_secret}],
                "includeConfigInLaunchedRuns": {"enabled": True},
            }],
        },
        "runLauncher": {
            "type": "K8sRunLauncher",
            "config": {"k8sRunLauncher": {"jobNamespace": s.namespace, "envSecrets": [{"name": s.s3_secret}],
                                          "runK8sConfig": {"podSpecConfig": {"serviceAccountName": "kura-runs"}}}},
        },
        "dagsterDaemon": {"enabled": True, "runCoordinator": {"enabled": True, "type": "QueuedRunCoordinator",
                                                              "config": {"queuedRunCoordinator": {
                                                                  "maxConcurrentRuns": 20}}}},
        "postgresql": {"enabled": pg.deploy_subchart, "postgresqlHost": pg.host, "postgresqlUsername": pg.username,
                       "postgresqlDatabase": pg.database, "postgresqlScheme": pg.scheme,
                       "service": {"port": pg.port}},
        "generatePostgresqlPasswordSecret": pg.deploy_subchart,
    }


def instance_config(pg: PostgresSettings) -> dict:
    """`dagster.yaml` for a process that shares the cluster's storage: the chart's storage section, telemetry
    off."""
    return {
        "storage": {"postgres": {"postgres_db": {"username": pg.username, "password": {"env": pg.password_env},
                                                 "hostname": pg.host, "db_name": pg.database, "port": pg.port,
                                                 "scheme": pg.scheme}}},
        "telemetry": {"enabled": False},
    }
