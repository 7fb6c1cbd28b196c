// Pins KubeRay's CRDs (config/crd/bases/ of the ray-operator module), which the local stack
// installs so that a sweep with spec.sweep.rayCluster can create its RayJob. Nothing is built.
module kexp.io/gotools/kuberay

go 1.24.0

require github.com/ray-project/kuberay/ray-operator v1.4.2
