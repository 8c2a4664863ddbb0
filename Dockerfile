# The trade backfill's Flex Template image, which is also the workers' SDK container image
# (launch_dataflow.sh passes this same image as --sdk_container_image). One image for both, so what
# the launcher validated and submitted is exactly what the workers run: the same Python, the same
# pinned packages, the same code (Apache Beam's and Dataflow's guidance for Flex Templates).
#
# Built by `./launch_dataflow.sh build` with Cloud Build (`docker build .` works the same where a
# Docker engine runs). tests/test_deploy.py checks this file statically.

# Must equal the apache-beam pin in requirements.txt (the worker boot program and the SDK agree).
ARG BEAM_VERSION=2.77.0
# Google's Python 3.11 template-launcher image; pin a dated tag from Dataflow's "Flex Templates
# base images" list for reproducible builds.
ARG LAUNCHER_BASE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest

FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam_sdk

# Python 3.11 and the Flex Template launcher, /opt/google/dataflow/python_template_launcher.
FROM ${LAUNCHER_BASE}

# The worker boot program, /opt/apache/beam/boot, which makes this image a Beam SDK container.
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam

ARG WORKDIR=/template
WORKDIR ${WORKDIR}
COPY . ${WORKDIR}

# The pinned requirements (the set verified together, pip check clean), then the package itself
# (non-editable: workers import `pipeline` and `transforms` from site-packages), then pip check.
RUN pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir . \
    && pip check

# The file the launcher runs with the launch parameters: it submits one run and returns.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=${WORKDIR}/main.py
# The package's setup.py: the launcher passes it as --setup_file, so the code is also staged with
# the job. The requirements are not set (FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE): this image, the
# workers' container, has them installed already, and staging them would only slow every launch.
ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE=${WORKDIR}/setup.py

# Dataflow starts this image twice: on the launcher VM (to run the template launcher) and on every
# worker (to run Beam's boot, which it starts with its --control_endpoint/--provision_endpoint
# flags). Each gets its program whether Dataflow appends its arguments to this entrypoint or
# names the program itself.
ENTRYPOINT ["/bin/sh", "-c", "case \" $* \" in *_endpoint*) exec /opt/apache/beam/boot \"$@\" ;; esac; exec /opt/google/dataflow/python_template_launcher \"$@\"", "entrypoint"]
