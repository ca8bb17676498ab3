// A placeholder for a module the Go module proxy does not serve; see ../go.mod.
module github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc

go 1.21
