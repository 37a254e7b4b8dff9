// OHIF configuration for the cxr-node demo: Orthanc's DICOMweb, proxied at the same origin
// by deploy/ohif/nginx.conf (no CORS set-up needed).
window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'Orthanc (cxr-node demo PACS)',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
  defaultDataSourceName: 'dicomweb',
  // Required for cxr-node's SR (see docs/viewer.md): OHIF 3.13 reads the first coordinate of
  // every measurement group, and the node's TID 1500 report has groups without one (findings
  // below threshold, No Finding, lung areas). Give those an empty coordinate OHIF then skips.
  customizationService: {
    onBeforeSRAddMeasurement: {
      $set: function ({ measurement }) {
        if (!measurement.coords || measurement.coords.length === 0) {
          measurement.coords = [{}];
        }
        return measurement;
      },
    },
  },
};
