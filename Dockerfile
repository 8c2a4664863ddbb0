# The trade backfill's Flex Template image, which is also the workers' SDK container image
# (launch_dataflow.sh passes this same image as sdk_container_image). One image for both, so what
# the launcher validated and submitted is exactly what the workers run: the same Python, the same
# pinned packages, the same code. Built the way Google's Flex Template sample
# `dataflow/flex-templates/pipeline_with_dependencies` (python-docs-samples) builds its image: a
# Beam SDK container image, plus the Flex Template launcher binary copied from Google's launcher
# image, plus the pipeline's pinned requirements and its package, installed.
#
# Built by `./launch_dataflow.sh build` with Cloud Build (`docker build .` works the same where a
# Docker engine runs). tests/test_deploy.py checks this file statically.

# Must equal the apache-beam pin in requirements.txt: the SDK the launcher submits with and the
# worker boot program (/opt/apache/beam/boot) that runs it come from the same Beam release.
ARG BEAM_VERSION=2.77.0
# Google's Python 3.11 Flex Template launcher image, pinned by tag (the tag Google's sample pins;
# the tags are listed on Dataflow's "Flex Templates base images" page). Only its launcher binary is
# used. Bump it deliberately, like BEAM_VERSION.
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:20230622_RC00

FROM ${LAUNCHER_IMAGE} AS launcher

# Python 3.11, apache-beam at BEAM_VERSION, and the worker boot program, /opt/apache/beam/boot.
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

# The Flex Template launcher, which makes this image a Flex Template image too.
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

ARG WORKDIR=/template
WORKDIR ${WORKDIR}
COPY . ${WORKDIR}

# The pinned requirements, held to the tested environment's versions (constraints.txt: the whole set,
# transitive ones too, so two builds of one commit are one image), then the package itself
# (non-editable: workers import `pipeline` and `transforms` from site-packages; `simulator` comes
# along, stdlib only, for `python -m pipeline simulate` and `demo`), then pip check.
RUN pip install --no-cache-dir -c constraints.txt -r requirements.txt \
    && pip install --no-cache-dir . \
    && pip check

# The file the launcher runs with the launch parameters: it submits one run and returns.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=${WORKDIR}/main.py
# Neither FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE nor FLEX_TEMPLATE_PYTHON_SETUP_FILE is set: this
# image, the workers' container, has the requirements and the package installed already. With a
# setup file the launcher would build an sdist and stage it, and every worker would pip-install it
# at boot, slowing every run's start-up for nothing.

# The worker boot program, as in Google's sample: the workers start it (with their
# --*_endpoint flags); on the launcher VM Dataflow runs the template launcher itself.
ENTRYPOINT ["/opt/apache/beam/boot"]
