// The 3D viewer of a textured GLB: three.js (vendored, see static/vendor/three/VENDOR.md), GLTFLoader and
// OrbitControls. Mouse/touch: drag to orbit, wheel/pinch to zoom, right-drag to pan. Keyboard (when the
// canvas has focus): arrows orbit, + and - zoom, 0 resets the view. Renders on demand, not every frame.

import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

const BACKGROUND = 0xe9ecf1;

export function webglAvailable() {
  try {
    const canvas = document.createElement("canvas");
    return Boolean(canvas.getContext("webgl2") || canvas.getContext("webgl"));
  } catch {
    return false;
  }
}

/** A viewer in `container` showing the GLB in `buffer` (an ArrayBuffer). Resolves once it is drawn. */
export async function showGlb(container, buffer, label) {
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  renderer.outputColorSpace = THREE.SRGBColorSpace;
  const canvas = renderer.domElement;
  canvas.tabIndex = 0;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${label}. Drag or use the arrow keys to orbit, wheel or + and - to zoom.`);
  canvas.className = "viewer-canvas";

  const scene = new THREE.Scene();
  scene.background = new THREE.Color(BACKGROUND);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x8d8d8d, 2.2));
  const sun = new THREE.DirectionalLight(0xffffff, 1.4);
  sun.position.set(2, 3, 4);
  scene.add(sun);

  const gltf = await new GLTFLoader().parseAsync(buffer, "");
  const model = gltf.scene;
  scene.add(model);

  // Frame the model: its bounding sphere fills the view from a raised three-quarter angle.
  const box = new THREE.Box3().setFromObject(model);
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  const radius = sphere.radius || 1;
  const camera = new THREE.PerspectiveCamera(40, 1, radius / 100, radius * 100);
  const home = sphere.center.clone().add(new THREE.Vector3(1, 0.7, 1.2).normalize().multiplyScalar(radius * 3));
  camera.position.copy(home);

  const controls = new OrbitControls(camera, canvas);
  controls.target.copy(sphere.center);
  controls.minDistance = radius * 0.5;
  controls.maxDistance = radius * 20;
  controls.update();

  const render = () => renderer.render(scene, camera);
  controls.addEventListener("change", render);

  const resize = () => {
    const width = Math.max(container.clientWidth, 1);
    const height = Math.max(Math.round(width * 0.75), 1);
    renderer.setSize(width, height);
    camera.aspect = width / height;
    camera.updateProjectionMatrix();
    render();
  };
  new ResizeObserver(resize).observe(container);

  canvas.addEventListener("keydown", (event) => {
    const offset = camera.position.clone().sub(controls.target);
    const spherical = new THREE.Spherical().setFromVector3(offset);
    const step = Math.PI / 24;
    switch (event.key) {
      case "ArrowLeft": spherical.theta -= step; break;
      case "ArrowRight": spherical.theta += step; break;
      case "ArrowUp": spherical.phi = Math.max(0.05, spherical.phi - step); break;
      case "ArrowDown": spherical.phi = Math.min(Math.PI - 0.05, spherical.phi + step); break;
      case "+": case "=": spherical.radius = Math.max(controls.minDistance, spherical.radius / 1.15); break;
      case "-": case "_": spherical.radius = Math.min(controls.maxDistance, spherical.radius * 1.15); break;
      case "0": spherical.setFromVector3(home.clone().sub(controls.target)); break;
      default: return;
    }
    event.preventDefault();
    camera.position.copy(controls.target).add(new THREE.Vector3().setFromSpherical(spherical));
    controls.update();
    render();
  });

  container.replaceChildren(canvas);
  resize();
  return {
    canvas,
    reset() {
      camera.position.copy(home);
      controls.update();
      render();
    },
  };
}
