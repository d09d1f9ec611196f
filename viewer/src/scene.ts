// The splat in WebGL: three.js with Spark's renderer, orbit controls, the camera framed on the splat.
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";

export interface Shown {
  gaussians: number;
}

/** Show the splat in ``bytes`` (``fileName`` tells Spark the format: .spz, .splat or .ply) on
 * ``canvas``; resolves once it has been drawn. */
export async function showSplat(canvas: HTMLCanvasElement, bytes: Uint8Array, fileName: string): Promise<Shown> {
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  const background = new THREE.Color(getComputedStyle(canvas).getPropertyValue("--scene-background").trim() || "#111");
  renderer.setClearColor(background, 1);
  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(50, 1, 0.01, 1000);
  scene.add(new SparkRenderer({ renderer }));

  const mesh = new SplatMesh({ fileBytes: bytes, fileName });
  // Splats from COLMAP-based training are y-down, z-forward (OpenCV); three.js is y-up, z-backward:
  // half a turn about x shows them the right way up.
  mesh.quaternion.set(1, 0, 0, 0);
  scene.add(mesh);
  await mesh.initialized;
  mesh.updateMatrixWorld(true);

  const box = mesh.getBoundingBox(true).applyMatrix4(mesh.matrixWorld);
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  const radius = Math.max(sphere.radius, 1e-3);
  const distance = radius / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2));
  camera.position.copy(sphere.center).add(new THREE.Vector3(0, radius * 0.3, distance));
  camera.near = distance / 100;
  camera.far = distance * 100;
  camera.lookAt(sphere.center);

  const controls = new OrbitControls(camera, canvas);
  controls.target.copy(sphere.center);
  controls.enableDamping = true;
  controls.update();

  const resize = () => {
    const { clientWidth: w, clientHeight: h } = canvas;
    if (canvas.width !== Math.floor(w * renderer.getPixelRatio()) || canvas.height !== Math.floor(h * renderer.getPixelRatio())) {
      renderer.setSize(w, h, false);
      camera.aspect = w / Math.max(h, 1);
      camera.updateProjectionMatrix();
    }
  };
  let frames = 0;
  let drawn: () => void = () => {};
  const firstFrames = new Promise<void>((resolve) => (drawn = resolve));
  renderer.setAnimationLoop(() => {
    resize();
    controls.update();
    renderer.render(scene, camera);
    // Spark sorts splats in a worker: give it a few frames before calling the picture drawn.
    if (++frames === 10) drawn();
  });
  await firstFrames;
  return { gaussians: mesh.packedSplats?.numSplats ?? 0 };
}
