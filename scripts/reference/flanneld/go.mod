// Builds flanneld (the module's root package) at the pinned version. One of its cloud
// backends, tencent-vpc, imports a Tencent Cloud SDK module the Go module proxy refuses to
// serve (403 at every version), so that one module is replaced by a placeholder of ours
// that compiles and refuses every call: the flanneld built here is flannel's own code,
// with only Backend.Type "tencent-vpc" unusable. scripts/reference.sh builds in a copy of
// this directory and adds the require of the version scripts/reference-versions pins (so
// go.sum and the version are written there, not here).
module twill.invalid/reference/flanneld

go 1.25.9

replace github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc => ./tencentcloud-vpc-unavailable
