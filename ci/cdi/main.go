// Imports a containerDisk from a registry with CDI's own registry data source
// (pkg/importer: NewRegistryDataSource -> Transfer), the code path CDI's importer
// pod runs for a `registry` DataVolume source, and prints the path of the disk
// file it extracted.
package main

import (
	"fmt"
	"os"

	"kubevirt.io/containerized-data-importer/pkg/importer"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: diskforge-cdi-import docker://REGISTRY/REPO:TAG SCRATCH_DIR")
		os.Exit(2)
	}
	ds := importer.NewRegistryDataSource(os.Args[1], "", "", "", "", true)
	defer ds.Close()
	if _, err := ds.Transfer(os.Args[2], false); err != nil {
		fmt.Fprintf(os.Stderr, "import failed: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(ds.GetURL().Path)
}
